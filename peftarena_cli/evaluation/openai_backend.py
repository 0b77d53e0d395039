"""Generation from a served model (``--backend openai --base-url URL [--served-model NAME]``).

:class:`OpenAIBackend` is a :class:`~peftarena_cli.evaluation.backend.GenerationBackend` that sends
the protocol's prompts to an OpenAI-compatible ``/v1/completions`` endpoint (``vllm serve``,
``transformers serve``, SGLang, TGI, llama.cpp's server, ...). Prompt rendering (the local
tokenizer's chat template), stop sequences and scoring are shared with the other backends, so the
served backend differs from the built-in engine only in who decodes the tokens.

* **Prompts are sent as text**, the rendered prompt exactly as the built-in engine receives it.
  Text is what every OpenAI-compatible server takes (``transformers serve`` refuses token ids), and
  the server's tokenizer then gives the engine's token ids, provided it is the same tokenizer: the
  one special case, a rendered prompt that starts with the BOS text while the tokenizer also adds
  a BOS, is sent without its BOS text (the server adds it back; the engine adds none then,
  :func:`~peftarena_cli.evaluation.backend.encode_prompts`). The server's reported prompt-token
  count is compared with the local one, and a mismatch is reported once (the server tokenizes
  differently: a different tokenizer or special-token rule).
* Each request carries ``max_tokens``, ``stop``, ``temperature``, ``top_p``, ``seed`` and ``n``.
  Greedy decoding (temperature 0) asks for one completion per prompt and repeats it, like the
  engine. Sampling asks for ``n`` completions with a seed per prompt; a server that returns fewer
  choices than asked (it ignores ``n``) is then asked once per sample, each with a seed per
  (prompt, sample), and the switch is logged once.
* Completions are cut at the first stop sequence here too (:func:`~peftarena_cli.evaluation.backend.first_stop`):
  some servers ignore ``stop``, and those that honour it may keep the stop text.
* Requests run on ``concurrency`` threads (stdlib ``urllib``). Every request has a timeout; a
  transient failure (connection refused or reset, a timeout, HTTP 408, 429 or 5xx) is retried up
  to ``retries`` times with exponential backoff, each retry logged; then a one-line
  :class:`~peftarena_cli.errors.ServerError`. Any other failure (HTTP 4xx, a reply that is not the
  expected JSON, a wrong number of choices) stops the run at once.
* Multiple-choice tasks scored by log-likelihood use the server's prompt log-probabilities
  (``echo`` with ``logprobs``, as vLLM offers them); a server that returns none is refused with a
  hint to use ``--backend hf``.
* Nothing is sent to any host but the one of ``base_url``: environment proxies are not used and
  redirects are not followed. A ``PEFTARENA_API_KEY`` in the environment is sent as a bearer token
  (``vllm serve --api-key``); credentials in the URL as basic authentication. Neither is recorded:
  the provenance keeps the host and port, the served model's name and the server's reported version
  (:meth:`OpenAIBackend.describe`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from peftarena_cli.errors import ServerError, UnsupportedMethod, UsageError
from peftarena_cli.evaluation.backend import Generation, GenerationBackend, encode_prompts, first_stop

DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_RETRIES = 3
BACKOFF_S = 0.5          # the first retry waits this long, each later one twice as long as the one before
API_KEY_ENV = "PEFTARENA_API_KEY"
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}  # and any other 5xx


class _Transient(Exception):
    """A failure worth retrying (the message is one line)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # never follow a redirect to another URL
        return None


def parse_base_url(url: str) -> tuple[str, str, str | None]:
    """(root URL without credentials and without a trailing /v1, host[:port], basic-auth credentials
    or None). Usage error for anything but an http(s) URL with a host."""
    u = urllib.parse.urlsplit(str(url).strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"--base-url {url!r} is not an http(s) URL",
                         hint="e.g. --base-url http://localhost:8000 (the server's address; /v1 may be left out)")
    try:
        port = u.port
    except ValueError:
        raise UsageError(f"--base-url {url!r} has a bad port", hint="e.g. --base-url http://localhost:8000") from None
    host = u.hostname if ":" not in u.hostname else f"[{u.hostname}]"
    hostport = host + (f":{port}" if port else "")
    path = u.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    creds = None
    if u.username is not None:
        creds = urllib.parse.unquote(u.username) + ":" + urllib.parse.unquote(u.password or "")
    return f"{u.scheme}://{hostport}{path}", hostport, creds


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


def strip_credentials(text: str) -> str:
    """``text`` with the credentials of any URL in it removed (``http://user:pw@host`` -> ``http://host``)."""
    return _USERINFO.sub(r"\1", str(text))


def _one_line(s, limit: int = 200) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[:limit] + "..."


def sample_seed(seed: int, item: int, sample: int = -1) -> int:
    """The seed of one request: a function of (seed, prompt index[, sample]) only, so a sampled
    completion does not depend on the concurrency or on the order requests finish in."""
    mixed = int(seed) * 0x9E3779B1 + int(item) * 0x85EBCA77 + (int(sample) + 1) * 0xC2B2AE3D
    return mixed % (2 ** 31 - 1)


class OpenAIBackend(GenerationBackend):
    """A model served behind an OpenAI-compatible ``/v1/completions`` endpoint (module docstring).

    ``log(msg)`` receives the retries and one-time notes. :meth:`connect` (called by the
    constructor unless ``connect=False``) checks the server and the model name."""

    name = "openai"

    def __init__(self, base_url: str, model: str | None = None, *, concurrency: int = DEFAULT_CONCURRENCY,
                 request_timeout: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES, backoff: float = BACKOFF_S,
                 log=None, connect: bool = True):
        self.root, self.host, creds = parse_base_url(base_url)
        if int(concurrency) < 1 or float(request_timeout) <= 0 or int(retries) < 0:
            raise UsageError("--concurrency and --request-timeout must be positive, --retries at least 0")
        self.model = model
        self.concurrency = int(concurrency)
        self.timeout = float(request_timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.log = log or (lambda msg: None)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(API_KEY_ENV)
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        elif creds:
            self.headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
        # no proxies from the environment, no redirects: requests go to the named host only
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._singles = False          # the server ignores n: one request per sample
        self._noted: set[str] = set()
        self.server_version = ""
        self.server_header = ""
        self.models: list[str] = []
        if connect:
            self.connect()

    # ---- HTTP ---------------------------------------------------------------------------------

    def _once(self, method: str, path: str, body: dict | None):
        """One request: (parsed JSON reply, headers). Raises _Transient or ServerError."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.root + path, data=data, method=method, headers=self.headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as r:
                raw, headers = r.read(), r.headers
        except urllib.error.HTTPError as e:
            detail = ""
            try:
                detail = _one_line(e.read().decode("utf-8", "replace"))
            except Exception:  # the body of an error reply is only a detail for the message
                pass
            msg = f"HTTP {e.code} from {self.host}{path}" + (f": {detail}" if detail else "")
            if e.code in TRANSIENT_STATUS or 500 <= e.code < 600:
                raise _Transient(msg) from None
            if e.code == 404:
                raise ServerError(msg, hint=f"check --base-url (the server's root, e.g. http://{self.host}) and "
                                            "--served-model (the names GET /v1/models lists)") from None
            if 300 <= e.code < 400:
                raise ServerError(f"{self.host}{path} redirects elsewhere (HTTP {e.code}); redirects are not followed",
                                  hint="pass the final address as --base-url") from None
            raise ServerError(msg, hint="the server refused the request; its message says why") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Transient(f"no reply from {self.host}{path} within {self.timeout:g} s") from None
            raise _Transient(f"{self.host}{path}: {_one_line(reason) or type(reason).__name__}") from None
        except Exception as e:  # http.client's own errors (RemoteDisconnected, IncompleteRead, BadStatusLine)
            raise _Transient(f"{self.host}{path}: {type(e).__name__} {_one_line(e)}".strip()) from None
        try:
            return json.loads(raw.decode("utf-8")), headers
        except (UnicodeDecodeError, ValueError):
            raise ServerError(f"the reply of {self.host}{path} is not JSON ({_one_line(raw[:80])!r})",
                              hint="check that --base-url is an OpenAI-compatible server (its /v1/completions)") from None

    def request(self, method: str, path: str, body: dict | None = None, what: str = "request"):
        """A request with the retries (module docstring); returns (reply, headers)."""
        for attempt in range(self.retries + 1):
            if self._stop.is_set():
                raise ServerError("stopped: another request of this run failed")
            try:
                return self._once(method, path, body)
            except _Transient as e:
                if attempt >= self.retries:
                    tries = f"{attempt + 1} tr{'y' if attempt == 0 else 'ies'}"
                    raise ServerError(f"{what} failed after {tries}: {e}",
                                      hint="check that the server is up (raise --request-timeout for slow "
                                           "generations, --retries for a flaky link); nothing was written") from None
                delay = self.backoff * 2 ** attempt
                self.log(f"openai backend: {what} failed ({e}); retry {attempt + 1}/{self.retries} in {delay:.1f} s")
                if self._stop.wait(delay):
                    raise ServerError("stopped: another request of this run failed") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def connect(self) -> None:
        """GET /v1/models: the server answers and serves ``self.model`` (None: the one model it
        serves); then the server's version where it reports one (GET /version, the Server header)."""
        reply, headers = self.request("GET", "/v1/models", what="listing the served models (GET /v1/models)")
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list) or not all(isinstance(d, dict) and "id" in d for d in data):
            raise ServerError(f"GET /v1/models on {self.host} did not list models (no data[].id)",
                              hint="check that --base-url is an OpenAI-compatible server")
        self.models = [str(d["id"]) for d in data]
        if self.model is None:
            if len(self.models) != 1:
                raise UsageError(f"the server at {self.host} serves {len(self.models)} models; say which",
                                 hint="pass --served-model NAME, one of: " + (", ".join(self.models[:10]) or "(none)"))
            self.model = self.models[0]
        elif self.model not in self.models:
            raise ServerError(f"the server at {self.host} does not serve a model named {self.model!r}",
                              hint="pass --served-model NAME, one of: " + (", ".join(self.models[:10]) or "(none)"))
        self.server_header = _one_line(headers.get("Server", "") or "", 80)
        try:  # vLLM (and others) report their version here; absent elsewhere, so one short try only
            req = urllib.request.Request(self.root + "/version", headers=self.headers)
            with self._opener.open(req, timeout=min(self.timeout, 10.0)) as r:
                v = json.loads(r.read().decode("utf-8"))
            if isinstance(v, dict) and v.get("version"):
                self.server_version = _one_line(v["version"], 80)
        except Exception:  # no version endpoint: the Server header is all there is
            pass

    def describe(self) -> dict:
        """What the provenance records: host (no scheme, path or credentials), model, version."""
        return {"host": self.host, "served_model": self.model, "server_version": self.server_version,
                "server": self.server_header, "concurrency": self.concurrency}

    def _note(self, key: str, msg: str) -> None:
        with self._lock:
            if key in self._noted:
                return
            self._noted.add(key)
        self.log(msg)

    # ---- generation ---------------------------------------------------------------------------

    def wire_prompt(self, tokenizer, prompt: str) -> str:
        """The text sent for ``prompt``: itself, but without a leading BOS text when the tokenizer
        adds a BOS on its own (the server adds it back), so the server sees the engine's token ids."""
        bos = tokenizer.bos_token
        if bos and prompt.startswith(bos) and _adds_bos(tokenizer):
            return prompt[len(bos):]
        return prompt

    def _complete(self, body: dict, what: str) -> dict:
        reply, _ = self.request("POST", "/v1/completions", body, what=what)
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) and isinstance(c.get("text"), str)
                                                    for c in choices):
            raise ServerError(f"the reply of {self.host}/v1/completions has no choices[].text ({what})",
                              hint="check that --base-url is an OpenAI-compatible server")
        return reply

    def generate(self, tokenizer, prompts: list[str], *, max_new_tokens: int = 256, stop=(), temperature: float = 0.0,
                 top_p: float = 1.0, n_samples: int = 1, seed: int = 0, batch_size=None, progress=None,
                 label: str = "", row_ids=None, **_) -> Generation:
        """Completions for every prompt, in the engine's :class:`Generation` layout."""
        stop = tuple(s for s in (stop or ()) if s)
        greedy = temperature is None or temperature <= 0
        n_run = 1 if greedy else int(n_samples)
        ids_of = list(row_ids) if row_ids is not None else list(range(len(prompts)))
        enc = encode_prompts(tokenizer, prompts)
        base = {"model": self.model, "max_tokens": int(max_new_tokens),
                "temperature": 0.0 if greedy else float(temperature), "top_p": 1.0 if greedy else float(top_p)}
        if stop:
            base["stop"] = list(stop)
        wire = [self.wire_prompt(tokenizer, p) for p in prompts]
        results: list = [None] * len(prompts)
        done = [0]
        total = len(prompts) * n_run

        def one(i: int):
            what = f"prompt {ids_of[i]}" + (f" of {label}" if label else "")
            texts, counts, reported = [], [], 0
            if n_run == 1 or not self._singles:
                body = dict(base, prompt=wire[i], n=n_run, seed=sample_seed(seed, ids_of[i]))
                reply = self._complete(body, what)
                got = reply["choices"]
                if n_run > 1 and len(got) < n_run:
                    self._note("n", f"openai backend: the server returned {len(got)} completion(s) where n={n_run} "
                                    "was asked; asking once per sample from now on")
                    self._singles = True
                else:
                    if len(got) != n_run:
                        raise ServerError(f"the server returned {len(got)} completions for {what} where {n_run} "
                                          "were asked", hint="check the server's n support, or use --backend hf")
                    got = sorted(got, key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)
                    texts = [c["text"] for c in got]
                    reported = self._usage(reply, enc[i], n_run)
            if not texts:  # one request per sample
                for s in range(n_run):
                    body = dict(base, prompt=wire[i], n=1, seed=sample_seed(seed, ids_of[i], s))
                    reply = self._complete(body, f"{what}, sample {s}")
                    if len(reply["choices"]) != 1:
                        raise ServerError(f"the server returned {len(reply['choices'])} completions for {what} "
                                          "where 1 was asked", hint="check the server, or use --backend hf")
                    texts.append(reply["choices"][0]["text"])
                    reported += self._usage(reply, enc[i], 1)
            for t in texts:
                counts.append(len(tokenizer(t, add_special_tokens=False)["input_ids"]))
            if n_run == 1 and reported:
                counts = [reported]
            cut = []
            for t in texts:
                k = first_stop(t, stop)
                cut.append(t[:k] if k >= 0 else t)
            return cut, counts, reported or sum(counts)

        t0 = time.perf_counter()
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(prompts))),
                                  thread_name_prefix="peftarena-openai")
        try:
            futures = {pool.submit(one, i): i for i in range(len(prompts))}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in finished:
                    err = f.exception()
                    if err is not None:
                        self._stop.set()
                        for p in pending:
                            p.cancel()
                        raise err
                    results[futures[f]] = f.result()
                    done[0] += n_run
                if progress is not None and finished:
                    progress(done[0], total, label)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # in-flight requests end within their timeout
        secs = time.perf_counter() - t0
        texts, counts, generated = [], [], 0
        for t_i, n_i, g in results:
            if greedy:
                t_i, n_i = t_i * n_samples, n_i * n_samples
            texts.append(t_i)
            counts.append(n_i)
            generated += g
        return Generation(texts, counts, seconds=secs, prompt_tokens=sum(len(e) for e in enc),
                          generated_tokens=generated, extra={"backend": "openai", **self.describe()})

    def _usage(self, reply: dict, enc: list[int], n: int) -> int:
        """The generated tokens the server reports (0 when it does not); notes once when its prompt
        token count differs from the local tokenizer's."""
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        pt = usage.get("prompt_tokens")
        if isinstance(pt, int) and pt != len(enc):
            self._note("tokens", f"openai backend: the server counted {pt} prompt tokens where the local tokenizer "
                                 f"has {len(enc)}; it tokenizes differently, so its completions may differ from "
                                 "--backend hf (serve the same tokenizer)")
        ct = usage.get("completion_tokens")
        return int(ct) if isinstance(ct, int) and ct >= 0 else 0

    # ---- log-likelihood -----------------------------------------------------------------------

    def choice_logliks(self, tokenizer, contexts: list[str], choices: list[list[str]], progress=None, label: str = ""):
        """``out[i][j]`` = log P(choices[i][j] | contexts[i]) from the server's prompt log-probabilities
        (``echo`` + ``logprobs``): the sum over the tokens that start at or after the end of the
        context (white space at the end of the context moves to the continuation, as
        :func:`~peftarena_cli.evaluation.loglik.encode_pair` does). A server that returns no prompt
        log-probabilities is refused (UnsupportedMethod)."""
        pairs = []
        for ctx, conts in zip(contexts, choices):
            n_space = len(ctx) - len(ctx.rstrip())
            head = ctx[:len(ctx) - n_space] if n_space else ctx
            tail = ctx[len(head):]
            for c in conts:
                pairs.append((head, tail + c))
        out_flat: list = [None] * len(pairs)

        def one(k: int):
            head, cont = pairs[k]
            text = self.wire_prompt(tokenizer, head + cont)
            start = len(text) - len(cont)
            body = {"model": self.model, "prompt": text, "max_tokens": 1, "temperature": 0.0, "echo": True,
                    "logprobs": 1}
            reply = self._complete(body, f"log-likelihood of choice {k}" + (f" of {label}" if label else ""))
            lp = reply["choices"][0].get("logprobs") if reply["choices"] else None
            offs = lp.get("text_offset") if isinstance(lp, dict) else None
            vals = lp.get("token_logprobs") if isinstance(lp, dict) else None
            if not isinstance(offs, list) or not isinstance(vals, list) or len(offs) != len(vals) or not offs:
                raise UnsupportedMethod(
                    f"the server at {self.host} returns no prompt log-probabilities (echo + logprobs), which "
                    f"{label or 'this task'} needs: it scores multiple choice by log-likelihood",
                    hint="evaluate this task with --backend hf (the local engine), or serve with vLLM")
            total, used = 0.0, 0
            for off, v in zip(offs, vals):
                if not isinstance(off, int) or off < start:
                    continue
                if off >= len(text):  # the generated token after the echoed prompt
                    break
                if not isinstance(v, (int, float)):
                    raise ServerError(f"the server gave no log-probability for a continuation token ({label})",
                                      hint="use --backend hf for this task")
                total += float(v)
                used += 1
            if used == 0:
                raise ServerError(f"no continuation token in the server's echoed prompt ({label})",
                                  hint="use --backend hf for this task")
            return total

        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="peftarena-openai")
        try:
            futures = {pool.submit(one, k): k for k in range(len(pairs))}
            pending, n_done = set(futures), 0
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in finished:
                    if f.exception() is not None:
                        self._stop.set()
                        for p in pending:
                            p.cancel()
                        raise f.exception()
                    out_flat[futures[f]] = f.result()
                n_done += len(finished)
                if progress is not None:
                    progress(n_done, len(pairs), label)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        out, lens, k = [], [], 0
        for conts in choices:
            out.append(out_flat[k:k + len(conts)])
            lens.append([0] * len(conts))
            k += len(conts)
        return out, lens


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS in front of plain text on its own."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos_id

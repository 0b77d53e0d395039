"""The served backend (``--backend openai``): against a real ``transformers serve`` of the tiny model
(greedy completions equal the built-in engine's), and against a stdlib stub server that misbehaves
on purpose (refused, dies mid-run, too slow, wrong model, ignores stop or n, not JSON). Every
failure is a one-line error (exit 1) or a logged retry, never a hang (pytest-timeout per test)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from peftarena_cli.errors import ServerError, UnsupportedMethod, UsageError


# ---- a stub OpenAI-compatible server --------------------------------------------------------------

class Stub:
    """A local /v1 server; ``complete(body, k)`` (k: the completion request's index) returns the
    reply: a dict (sent as JSON), ``(status, bytes)``, or ``"drop"`` (the connection is closed
    without a reply)."""

    def __init__(self, complete=None, models=("tiny",)):
        self.complete = complete or (lambda body, k: {"choices": [{"index": 0, "text": "stub"}]})
        self.models = list(models)
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, data: bytes, ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": m} for m in stub.models]}).encode())
                elif self.path == "/version":
                    self._send(200, b'{"version": "9.9.9-stub"}')
                else:
                    self._send(404, b'{"detail": "not found"}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    k = len(stub.bodies)
                    stub.bodies.append(body)
                    stub.headers.append(dict(self.headers))
                    stub.inflight += 1
                    stub.max_inflight = max(stub.max_inflight, stub.inflight)
                try:
                    if self.path != "/v1/completions":
                        return self._send(404, b'{"detail": "not found"}')
                    out = stub.complete(body, k)
                finally:
                    with stub.lock:
                        stub.inflight -= 1
                if out == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(out, tuple):
                    return self._send(out[0], out[1], "text/html")
                self._send(200, json.dumps(out).encode())

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a dropped connection is on purpose
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def die(self):
        """Stop listening: later connections are refused."""
        threading.Thread(target=lambda: (self.server.shutdown(), self.server.server_close()), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    made = []

    def make(*a, **k):
        s = Stub(*a, **k)
        made.append(s)
        return s

    yield make
    for s in made:
        try:
            s.close()
        except OSError:
            pass


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _backend(url, **kw):
    from peftarena_cli.evaluation.openai_backend import OpenAIBackend

    logs: list[str] = []
    kw.setdefault("backoff", 0.01)
    b = OpenAIBackend(url, log=logs.append, **kw)
    return b, logs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _err_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


# ---- the request: prompts, parameters, stop cut, n -----------------------------------------------

@pytest.mark.timeout(60)
def test_request_carries_the_prompt_and_generation_parameters(stub, tok):
    s = stub()
    b, _ = _backend(s.url)
    assert b.model == "tiny" and b.server_version == "9.9.9-stub"  # the server's only model, its version
    b.generate(tok, ["2+2=", "3+4="], max_new_tokens=7, stop=("\n", ""), temperature=0.0, seed=5)
    by_prompt = {x["prompt"]: x for x in s.bodies}
    assert set(by_prompt) == {"2+2=", "3+4="}
    body = by_prompt["3+4="]
    assert body["model"] == "tiny" and body["max_tokens"] == 7 and body["n"] == 1
    assert body["temperature"] == 0.0 and body["top_p"] == 1.0 and body["stop"] == ["\n"]
    from peftarena_cli.evaluation.openai_backend import sample_seed

    assert body["seed"] == sample_seed(5, 1)


class _CharTokenizer:
    """One id per character, "<s>" as the BOS (id 1); adds a BOS in front when ``adds_bos``."""

    bos_token, bos_token_id = "<s>", 1

    def __init__(self, adds_bos: bool):
        self.adds_bos = adds_bos

    def __call__(self, text, add_special_tokens=True):
        ids = []
        if text.startswith(self.bos_token):
            ids, text = [1], text[len(self.bos_token):]
        ids += [ord(c) for c in text]
        return {"input_ids": ([1] if add_special_tokens and self.adds_bos else []) + ids}


@pytest.mark.timeout(60)
def test_leading_bos_text_is_left_to_the_server_when_the_tokenizer_adds_one(stub):
    """The engine adds no second BOS to a prompt that starts with one; the server tokenizes with
    special tokens, so the BOS text is sent without it and the server's ids are the engine's."""
    from peftarena_cli.evaluation.backend import encode_prompts

    s = stub()
    b, _ = _backend(s.url)
    adds = _CharTokenizer(adds_bos=True)
    p = "<s>hello"
    sent = b.wire_prompt(adds, p)
    assert sent == "hello"
    assert adds(sent)["input_ids"] == encode_prompts(adds, [p])[0] == [1] + [ord(c) for c in "hello"]
    assert b.wire_prompt(adds, "hello") == "hello"
    plain = _CharTokenizer(adds_bos=False)  # the server adds none either: the text goes as it is
    assert b.wire_prompt(plain, p) == p
    assert plain(p)["input_ids"] == encode_prompts(plain, [p])[0]


@pytest.mark.timeout(60)
def test_a_server_that_ignores_stop_is_cut_at_the_first_stop(stub, tok):
    s = stub(lambda body, k: {"choices": [{"index": 0, "text": "x = 4\n\nQ: next\n\nmore"}]})
    b, _ = _backend(s.url)
    g = b.generate(tok, ["a", "b"], stop=("\n\n", "Q:"), n_samples=2)
    assert g.texts == [["x = 4", "x = 4"], ["x = 4", "x = 4"]]  # greedy: one request, repeated
    assert len(s.bodies) == 2


@pytest.mark.timeout(60)
def test_a_server_that_honours_n_is_asked_once_per_prompt(stub, tok):
    def complete(body, k):
        return {"choices": [{"index": j, "text": f"s{j}"} for j in reversed(range(body["n"]))]}

    s = stub(complete)
    b, logs = _backend(s.url)
    g = b.generate(tok, ["a", "b", "c"], temperature=0.7, top_p=0.9, n_samples=3, seed=1)
    assert g.texts == [["s0", "s1", "s2"]] * 3  # put back in index order
    assert len(s.bodies) == 3 and all(x["n"] == 3 and x["top_p"] == 0.9 for x in s.bodies)
    assert not logs


@pytest.mark.timeout(60)
def test_a_server_that_ignores_n_is_asked_once_per_sample_with_its_own_seed(stub, tok):
    from peftarena_cli.evaluation.openai_backend import sample_seed

    s = stub(lambda body, k: {"choices": [{"index": 0, "text": f"seed {body['seed']}"}]})
    b, logs = _backend(s.url, concurrency=1)
    g = b.generate(tok, ["a", "b"], temperature=0.7, n_samples=3, seed=4)
    assert g.texts == [[f"seed {sample_seed(4, i, j)}" for j in range(3)] for i in range(2)]
    assert len({t for row in g.texts for t in row}) == 6  # every sample its own seed
    assert sum("asking once per sample" in m for m in logs) == 1  # logged once
    # the first prompt's n=3 request, then single requests: 1 + 3 + 3
    assert [x["n"] for x in s.bodies] == [3, 1, 1, 1, 1, 1, 1]


@pytest.mark.timeout(60)
def test_too_many_choices_is_an_error(stub, tok):
    s = stub(lambda body, k: {"choices": [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}]})
    b, _ = _backend(s.url)
    with pytest.raises(ServerError, match="returned 2 completions"):
        b.generate(tok, ["a"], n_samples=1)


@pytest.mark.timeout(60)
def test_concurrency_is_bounded(stub, tok):
    def complete(body, k):
        time.sleep(0.05)
        return {"choices": [{"index": 0, "text": "ok"}]}

    s = stub(complete)
    b, _ = _backend(s.url, concurrency=2)
    g = b.generate(tok, [f"p{i}" for i in range(12)])
    assert g.texts == [["ok"]] * 12 and len(s.bodies) == 12
    assert s.max_inflight <= 2


@pytest.mark.timeout(60)
def test_transient_errors_are_retried_and_logged(stub, tok):
    def complete(body, k):
        return (503, b"busy") if k < 2 else {"choices": [{"index": 0, "text": "fine"}]}

    s = stub(complete)
    b, logs = _backend(s.url, concurrency=1, retries=3)
    assert b.generate(tok, ["a"]).texts == [["fine"]]
    retries = [m for m in logs if "retry" in m]
    assert len(retries) == 2 and "HTTP 503" in retries[0] and "retry 1/3" in retries[0] and "retry 2/3" in retries[1]


# ---- log-likelihood tasks -------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_choice_logliks_sum_the_continuation_tokens_of_the_echoed_prompt(stub, tok):
    """The stub echoes the prompt as one-character tokens with log-probability -(1 + offset)/100; the
    continuation's log-likelihood is the sum over its characters' offsets (hand-worked below)."""
    def complete(body, k):
        text = body["prompt"]
        assert body["echo"] is True and body["logprobs"] >= 1
        offs = list(range(len(text) + 1))  # plus the generated token
        lps = [None] + [-(1 + o) / 100 for o in offs[1:]]
        return {"choices": [{"index": 0, "text": text + "Z",
                             "logprobs": {"tokens": list(text) + ["Z"], "token_logprobs": lps, "text_offset": offs}}]}

    s = stub(complete)
    b, _ = _backend(s.url)
    out, _ = b.choice_logliks(tok, ["Q?  "], [[" A", " BC"]])
    # white space at the context's end moves to the continuation: the context is "Q?" (offsets 0, 1),
    # the continuations "   A" (offsets 2..5) and "   BC" (offsets 2..6)
    assert out[0][0] == pytest.approx(-(3 + 4 + 5 + 6) / 100, abs=1e-12)
    assert out[0][1] == pytest.approx(-(3 + 4 + 5 + 6 + 7) / 100, abs=1e-12)


@pytest.mark.timeout(60)
def test_a_server_without_prompt_logprobs_refuses_loglik_tasks(stub, tok):
    s = stub()
    b, _ = _backend(s.url)
    with pytest.raises(UnsupportedMethod, match="log-likelihood") as e:
        b.choice_logliks(tok, ["Q?"], [[" A", " B"]], label="medqa")
    assert "--backend hf" in e.value.hint


# ---- the command line: option rules and failures ------------------------------------------------

def _eval(cli, base, url, out, *extra):
    return cli("eval-target", base, "--task", "arith", "--limit", "3", "--backend", "openai", "--base-url", url,
               "-o", out, *extra)


@pytest.mark.timeout(60)
def test_adapter_with_a_served_model_is_a_usage_error(cli, tiny_model_dir, tiny_lora_dir, tmp_path):
    r = _eval(cli, tiny_model_dir, "http://127.0.0.1:9", tmp_path / "o.parquet", "--adapter", tiny_lora_dir)
    assert r.returncode == 2 and "--adapter" in r.stderr and "--served-model" in r.stderr
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.timeout(60)
def test_base_url_without_the_openai_backend_is_a_usage_error(cli, tiny_model_dir, tmp_path):
    r = cli("eval-target", tiny_model_dir, "--task", "arith", "--limit", "2", "--base-url", "http://127.0.0.1:9",
            "-o", tmp_path / "o.parquet")
    assert r.returncode == 2 and "--backend openai" in r.stderr
    r = cli("eval-general", tiny_model_dir, "--backend", "openai", "-o", tmp_path / "o.parquet")
    assert r.returncode == 2 and "--base-url" in r.stderr
    r = _eval(cli, tiny_model_dir, "ftp://host", tmp_path / "o.parquet")
    assert r.returncode == 2 and "http" in r.stderr


@pytest.mark.timeout(60)
def test_connection_refused_is_retried_then_one_line_error(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "o.parquet"
    r = _eval(cli, tiny_model_dir, f"http://127.0.0.1:{_free_port()}", out, "--retries", "1")
    assert r.returncode == 1
    assert len(_err_lines(r.stderr)) == 1 and "after 2 tries" in r.stderr and "Traceback" not in r.stderr
    assert "retry 1/1" in r.stderr  # the retry is logged
    assert "nothing was written" in r.stderr and not out.exists()


@pytest.mark.timeout(60)
def test_a_server_that_dies_mid_run_leaves_earlier_output_untouched(cli, stub, tiny_model_dir, tmp_path):
    holder = {}

    def complete(body, k):
        if k >= 1:
            holder["s"].die()
            return "drop"
        return {"choices": [{"index": 0, "text": "7"}]}

    s = holder["s"] = stub(complete)
    import pandas as pd

    out = tmp_path / "o.parquet"
    pd.DataFrame({"earlier": [1, 2]}).to_parquet(out)  # an earlier run's table, which -o would replace
    before = out.read_bytes()
    r = _eval(cli, tiny_model_dir, s.url, out, "--retries", "2", "--concurrency", "1")
    assert r.returncode == 1 and len(_err_lines(r.stderr)) == 1 and "Traceback" not in r.stderr
    assert "retry 1/2" in r.stderr and "retry 2/2" in r.stderr
    assert "nothing was written" in r.stderr and out.read_bytes() == before
    assert not (tmp_path / "o.summary.parquet").exists()


@pytest.mark.timeout(60)
def test_a_request_that_times_out_is_retried_then_one_line_error(cli, stub, tiny_model_dir, tmp_path):
    def complete(body, k):
        time.sleep(3)
        return {"choices": [{"index": 0, "text": "late"}]}

    s = stub(complete)
    r = _eval(cli, tiny_model_dir, s.url, tmp_path / "o.parquet", "--request-timeout", "0.3", "--retries", "1")
    assert r.returncode == 1 and len(_err_lines(r.stderr)) == 1
    assert "no reply" in r.stderr and "within 0.3 s" in r.stderr and "retry 1/1" in r.stderr


@pytest.mark.timeout(60)
def test_a_model_the_server_does_not_serve_is_refused_before_generation(cli, stub, tiny_model_dir, tmp_path):
    s = stub(models=("other-model",))
    r = _eval(cli, tiny_model_dir, s.url, tmp_path / "o.parquet", "--served-model", "tiny")
    assert r.returncode == 1 and len(_err_lines(r.stderr)) == 1
    assert "'tiny'" in r.stderr and "other-model" in r.stderr
    assert s.bodies == []  # nothing was generated


@pytest.mark.timeout(60)
def test_a_404_from_completions_is_one_line_error(cli, stub, tiny_model_dir, tmp_path):
    s = stub(lambda body, k: (404, b'{"detail": "model not found"}'))
    r = _eval(cli, tiny_model_dir, s.url, tmp_path / "o.parquet")
    assert r.returncode == 1 and len(_err_lines(r.stderr)) == 1
    assert "HTTP 404" in r.stderr and "model not found" in r.stderr
    assert "retry" not in r.stderr  # not transient


@pytest.mark.timeout(60)
def test_a_reply_that_is_not_json_is_one_line_error(cli, stub, tiny_model_dir, tmp_path):
    s = stub(lambda body, k: (200, b"<html>proxy login</html>"))
    r = _eval(cli, tiny_model_dir, s.url, tmp_path / "o.parquet")
    assert r.returncode == 1 and len(_err_lines(r.stderr)) == 1
    assert "not JSON" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.timeout(60)
def test_provenance_records_host_model_and_version_never_credentials(cli, stub, tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    from peftarena_cli.artifacts.tables import read_table

    s = stub(lambda body, k: {"choices": [{"index": 0, "text": "The answer is 3"}]})
    url = s.url.replace("http://", "http://alice:s3cret@") + "/v1"
    out = tmp_path / "o.parquet"
    monkeypatch.setattr(sys, "argv", ["peftarena", "eval-target", "--base-url", url])  # what the provenance keeps
    r = _eval(cli, tiny_model_dir, url, out)
    assert r.returncode == 0, r.stderr
    df, prov = read_table(out)
    assert list(df["completion"]) == ["The answer is 3"] * 3
    text = json.dumps(prov)
    assert "s3cret" not in text and "alice" not in text
    assert prov["argv"][-1] == s.url + "/v1"
    host = s.url.removeprefix("http://")
    assert prov["extra"]["served"]["host"] == host and prov["extra"]["served"]["served_model"] == "tiny"
    assert prov["extra"]["served"]["server_version"] == "9.9.9-stub" and prov["extra"]["backend"] == "openai"
    assert prov["inputs"]["served"] == f"{host}/tiny@9.9.9-stub"
    assert "base" not in prov["inputs"] and "tokenizer" in prov["inputs"]  # local weights were not evaluated
    import base64

    assert s.headers[0]["Authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()


# ---- a real server -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served_tiny(tiny_model_dir, tmp_path_factory):
    """``transformers serve`` of the tiny model on CPU in float32, on a free local port."""
    pytest.importorskip("fastapi", reason="transformers[serving] is not installed (pip install -e '.[dev]')")
    pytest.importorskip("uvicorn", reason="transformers[serving] is not installed (pip install -e '.[dev]')")
    port = _free_port()
    exe = Path(sys.executable).with_name("transformers")
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "wb")
    proc = subprocess.Popen([str(exe), "serve", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            stdout=log, stderr=log, start_new_session=True, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    t0 = time.time()
    try:
        while True:
            assert proc.poll() is None, f"transformers serve exited ({proc.returncode}): see {log.name}"
            assert time.time() - t0 < 240, "transformers serve did not start within 240 s"
            try:
                with opener.open(url + "/v1/models", timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.timeout(400)  # about 10 s here (the server's start most of it): not marked slow
def test_greedy_completions_from_transformers_serve_equal_the_engines(cli, served_tiny, tiny_model_dir, tmp_path):
    from peftarena_cli.artifacts.tables import read_table

    hf, op = tmp_path / "hf.parquet", tmp_path / "openai.parquet"
    common = ["--task", "arith", "--limit", "6", "--max-new-tokens", "24", "--device", "cpu"]
    r = cli("eval-target", tiny_model_dir, *common, "-o", hf)
    assert r.returncode == 0, r.stderr
    r = cli("eval-target", tiny_model_dir, *common, "--backend", "openai", "--base-url", served_tiny,
            "--concurrency", "3", "-o", op)
    assert r.returncode == 0, r.stderr
    a, _ = read_table(hf)
    b, prov = read_table(op)
    assert list(a["id"]) == list(b["id"]) and len(a) == 6
    assert list(a["completion"]) == list(b["completion"])  # token-for-token the same greedy decoding
    assert any(len(c) > 0 for c in a["completion"])
    assert prov["extra"]["served"]["served_model"] == str(tiny_model_dir)
    assert "prompt tokens" not in r.stderr  # the server tokenized the prompts as the engine did


# ---- interpolate: each α's point served under its own name ----------------------------------------

@pytest.mark.timeout(120)
def test_interpolate_evaluates_each_alphas_served_point(cli, stub, tiny_model_dir, tiny_lora_dir, tmp_path):
    from peftarena_cli.artifacts.tables import read_table

    s = stub(lambda body, k: {"choices": [{"index": 0, "text": f"served by {body['model']}"}]},
             models=("ft-a0.0", "ft-a0.5", "ft-a1.0"))
    out = tmp_path / "curve.parquet"
    r = cli("interpolate", tiny_model_dir, tiny_lora_dir, "--alphas", "0,0.5,1", "--eval", "target",
            "--target-task", "arith", "--limit", "2", "--backend", "openai", "--base-url", s.url,
            "--served-model", "ft-a{alpha}", "--device", "cpu", "-o", out)
    assert r.returncode == 0, r.stderr
    samples, prov = read_table(tmp_path / "curve.target-samples.parquet")
    got = {(a, c) for a, c in zip(samples["alpha"], samples["completion"])}
    assert got == {(0.0, "served by ft-a0.0"), (0.5, "served by ft-a0.5"), (1.0, "served by ft-a1.0")}
    assert len(samples) == 6
    assert prov["extra"]["served"]["served_models"] == ["ft-a0.0", "ft-a0.5", "ft-a1.0"]
    assert prov["extra"]["served"]["host"] == s.url.removeprefix("http://")


@pytest.mark.timeout(60)
def test_interpolate_refuses_one_served_model_for_every_alpha(cli, tiny_model_dir, tiny_lora_dir, tmp_path):
    args = ["interpolate", tiny_model_dir, tiny_lora_dir, "--alphas", "0,1", "--eval", "target", "--backend", "openai",
            "--base-url", "http://127.0.0.1:9", "-o", tmp_path / "c.parquet"]
    r = cli(*args, "--served-model", "ft")
    assert r.returncode == 2 and "{alpha}" in r.stderr
    r = cli(*args[:5], "--backend", "openai", "--base-url", "http://127.0.0.1:9", "--served-model", "ft{alpha}")
    assert r.returncode == 2 and "--eval" in r.stderr  # nothing to generate
    assert not (tmp_path / "c.parquet").exists()


@pytest.mark.timeout(60)
def test_interpolate_refuses_an_alpha_the_server_does_not_serve(cli, stub, tiny_model_dir, tiny_lora_dir, tmp_path):
    s = stub(models=("ft-a0.0",))
    r = cli("interpolate", tiny_model_dir, tiny_lora_dir, "--alphas", "0,1", "--eval", "target", "--backend", "openai",
            "--base-url", s.url, "--served-model", "ft-a{alpha}", "-o", tmp_path / "c.parquet")
    assert r.returncode == 1 and len(_err_lines(r.stderr)) == 1 and "'ft-a1.0'" in r.stderr
    assert s.bodies == [] and not (tmp_path / "c.parquet").exists()

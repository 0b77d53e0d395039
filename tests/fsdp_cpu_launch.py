"""Start ``peftarena`` under FSDP on CPU, for tests: ``accelerate launch --config_file
configs/fsdp-cpu-test.yaml tests/fsdp_cpu_launch.py finetune ...``.

accelerate 1.16 decides the distributed type from the device: on a machine without GPUs it sets up
data-parallel CPU training (``MULTI_CPU``, gloo) and ignores the FSDP plugin that the launcher's
config asks for. This launcher changes only that decision (MULTI_CPU with an FSDP plugin becomes
FSDP); the model is then wrapped by accelerate's own ``fully_shard`` over a gloo device mesh and the
run follows the same trainer, gather and save code as on GPUs.
"""

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        # later AcceleratorState() calls copy PartialState's shared state back in: keep FSDP there too
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = _init_fsdp_on_cpu

if __name__ == "__main__":
    import functools
    import os

    from peftarena_cli.cli.app import main

    if os.environ.get("PEFTARENA_TEST_INTERRUPT_AFTER"):
        # stop every process with a KeyboardInterrupt once that step's checkpoint is written (the
        # runner's test hook), as Ctrl-C would: a run to --resume
        from peftarena_cli.training import runner

        runner.finetune = functools.partial(runner.finetune,
                                            _interrupt_after=int(os.environ["PEFTARENA_TEST_INTERRUPT_AFTER"]))

    main(sys.argv[1:])

"""A fault for the Ray engine's tests, installed in every Ray worker by
``runtime_env={"worker_process_setup_hook": "tests.data.ray_faults.kill_once"}``: once the file
``$LLAMA2_TEST_KILL_MARKER.armed`` exists, the first worker to clean a chunk kills its own process
(SIGKILL, as the OOM killer would), leaving ``.fired`` so that it happens once per arming."""

import os
import signal


def kill_once() -> None:
    marker = os.environ.get("LLAMA2_TEST_KILL_MARKER")
    if not marker:
        return
    from llama2_pipeline.data import process

    clean_chunk = process.process_chunk

    def process_chunk(chunk):
        if os.path.exists(marker + ".armed"):
            try:
                os.close(os.open(marker + ".fired", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return clean_chunk(chunk)

    process.process_chunk = process_chunk

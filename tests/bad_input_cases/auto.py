"""`mergekit-from auto` inputs that must be refused, locally checkable ones before any request to the Hub.

Those cases point ``--endpoint`` at a port nobody listens on: an error about the input (and not
"cannot reach the Hub") shows that it was checked first.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.bad_input_cases import Case, Run
from tests.fixtures.hub_repos import BASE, GATED


def _closed_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _calib(env) -> Path:
    path = env.tmp / "math.jsonl"
    path.write_text('{"prompt": "1+1=", "response": "2"}\n')
    return path


def auto_run(env, *extra: str, culprit: str | None = None, base: str = BASE, endpoint: str | None = None,
             calib: bool = True, run_env: dict[str, str] | None = None) -> Run:
    """``auto ... --out OUT`` in the case's folder; OUT and the calibration file stay as they were."""
    out = env.tmp / "out"
    files = [_calib(env)] if calib else []
    argv = ["auto", "--base", base, "--target", "math word problems", "--out", str(out),
            "--endpoint", endpoint or _closed_endpoint(), "--db", f"sqlite:///{env.tmp / 'zoo.sqlite'}",
            "--cache-dir", str(env.tmp / "hf-cache"), "--quiet", *(a for f in files for a in ("--calib", str(f))),
            *extra]
    return Run(argv, protect=[out, *files], culprit=culprit, env=run_env or {})


CASES = [
    Case("auto-set-unknown-key", "mergekit-from auto ... --set max_iter=3", "not a setting of fw_soft (accepted:",
         lambda env: auto_run(env, "--set", "max_iter=3", culprit="max_iter"), fixtures=()),
    Case("auto-set-bad-value", "mergekit-from auto ... --method from --set k=-1", "is invalid for from",
         lambda env: auto_run(env, "--method", "from", "--set", "k=-1", culprit="k=-1"), fixtures=()),
    Case("auto-set-bad-fw-value", "mergekit-from auto ... --set max_iters=0", "--set for fw_soft",
         lambda env: auto_run(env, "--set", "max_iters=0", culprit="max_iters"), fixtures=()),
    Case("auto-set-unknown-from-key", "mergekit-from auto ... --method from --set lamda=2",
         "not a setting of from (accepted: k, lambda, scope, weight)",
         lambda env: auto_run(env, "--method", "from", "--set", "lamda=2", culprit="lamda"), fixtures=()),
    Case("auto-set-targets", "mergekit-from auto ... --set targets=x  # targets come from --calib",
         "not a setting of fw_soft", lambda env: auto_run(env, "--set", "targets=x", culprit="targets"), fixtures=()),
    Case("auto-set-init-missing", "mergekit-from auto ... --set init=./nowhere", "no such folder",
         lambda env: auto_run(env, "--set", "init=./nowhere", culprit="init=./nowhere"), fixtures=()),
    Case("auto-set-no-value", "mergekit-from auto ... --set k", "expected KEY=VALUE",
         lambda env: auto_run(env, "--set", "k", culprit="'k'"), fixtures=()),
    Case("auto-unknown-method", "mergekit-from auto ... --method frm", "is not one of",
         lambda env: auto_run(env, "--method", "frm", culprit="'frm'"), fixtures=()),
    Case("auto-calib-missing", "mergekit-from auto ... --calib none.jsonl", "calibration file not found",
         lambda env: auto_run(env, "--calib", str(env.tmp / "none.jsonl"), culprit="none.jsonl"), fixtures=()),
    Case("auto-calib-two-files-one-task", "mergekit-from auto ... --calib math=a.jsonl --calib math=b.jsonl",
         "two files for task", lambda env: auto_run(env, "--calib", f"math={_calib(env)}", culprit="'math'"),
         fixtures=()),
    Case("auto-fw-without-calib", "mergekit-from auto ... --method fw_hard  # no --calib", "needs calibration data",
         lambda env: auto_run(env, "--method", "fw_hard", calib=False, culprit="fw_hard"), fixtures=()),
    Case("auto-pool-size-zero", "mergekit-from auto ... --pool-size 0", "--pool-size must be >= 1",
         lambda env: auto_run(env, "--pool-size", "0", culprit="0"), fixtures=()),
    Case("auto-pool-size-not-int", "mergekit-from auto ... --pool-size many", "is not a valid integer",
         lambda env: auto_run(env, "--pool-size", "many", culprit="'many'"), fixtures=()),
    Case("auto-bad-base-id", "mergekit-from auto --base 'tiny llama' ...", "is not a Hub repo id",
         lambda env: auto_run(env, culprit="'tiny llama'", base="tiny llama"), fixtures=()),
    Case("auto-empty-target", "mergekit-from auto ... --target ''", "--target is empty",
         lambda env: auto_run(env, "--target", "", culprit="--target"), fixtures=()),
    Case("auto-bad-push-repo", "mergekit-from auto ... --push-to-hub 'my merge'", "is not a Hub repo id",
         lambda env: auto_run(env, "--push-to-hub", "my merge", culprit="'my merge'",
                              run_env={"HF_TOKEN": "hf_not_used"}), fixtures=()),
    Case("auto-unknown-base", "mergekit-from auto --base acme/no-such-model ...", "not found on",
         lambda env: auto_run(env, "--method", "from", base="acme/no-such-model", endpoint=env.hub.endpoint,
                              culprit="'acme/no-such-model'"), fixtures=("hub",)),
    Case("auto-gated-base", "mergekit-from auto --base GATED ...  # no token with access", "is gated on",
         lambda env: auto_run(env, "--method", "from", base=GATED, endpoint=env.hub.endpoint, culprit=repr(GATED)),
         fixtures=("hub",)),
    Case("auto-max-probe-zero", "mergekit-from auto ... --max-probe 0", "--max-probe must be >= 1",
         lambda env: auto_run(env, "--max-probe", "0", culprit="0"), fixtures=()),
    Case("auto-no-evidence", "mergekit-from auto ... --calib math.jsonl  # no candidate aligns with the gradient",
         "no candidate shows evidence for the target",
         lambda env: auto_run(env, endpoint=env.twin_hub.endpoint, culprit=BASE,
                              run_env={"XDG_CACHE_HOME": str(env.tmp / "cache")}), fixtures=("twin_hub",)),
]

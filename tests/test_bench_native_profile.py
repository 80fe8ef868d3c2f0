"""bench.native_profile: a Python process's perf samples summed by the native code they
landed in (``python -m bench.profile_worker --perf``).

The first tests read a fixed ``perf script`` text, in the form perf prints for a worker;
the last records a real Python process sealing with pyca's HPKE (skipped where perf is
missing or not allowed), so that a pyca release whose crypto moves to another library
file is noticed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.native_profile import NATIVE_CATEGORIES, categorize_native
from bench.perf_samples import (
    MAIN_THREAD,
    OTHER_THREAD,
    fold_perf_script,
    perf_record_arguments,
    perf_script_arguments,
)
from bench.profile_worker import main
from tests.support.perf import perf_can_record

_PY = "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0"
_PYCA = "/work/main/.venv/lib/python3.11/site-packages/cryptography/hazmat/bindings/_rust.abi3.so"
_LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
_K = "([kernel.kallsyms])"
_PERF_SCRIPT = f"""\
python  5316/5316
\t          1b984c tupledealloc ({_PY})
\t    7fb2e865e380 [unknown] ([unknown])

python  5316/5320
\t          9b23cc ossl_ml_dsa_sign+0x3c ({_PYCA})
\t   14f4d005b4a7e [unknown] ([unknown])

python  5316/5321
\tffffffff82251fb9 _raw_spin_unlock_irqrestore {_K}
\tffffffff813b52ed try_to_wake_up {_K}
\tffffffff8144bfed __x64_sys_futex {_K}
\tffffffff8223df91 do_syscall_64 {_K}
\tffffffff81000130 entry_SYSCALL_64_after_hwframe {_K}
\t           87ebf pthread_cond_signal@@GLIBC_2.3.2 ({_LIBC})

python  5316/5316
\tffffffff81d1c0a0 tcp_sendmsg_locked {_K}
\tffffffff8223df91 do_syscall_64 {_K}
\t          12f0a1 __send ({_LIBC})

python  5316/5316
\tffffffff81200010 clear_page_erms {_K}
\tffffffff81200020 asm_exc_page_fault {_K}
\t           9a001 _PyObject_Malloc ({_PY})

python  5316/5316
\t          2a1f00 gc_collect_main ({_PY})

python  5316/5316
\t           a1b2c __memmove_avx512_unaligned_erms ({_LIBC})

python  5316/5316
\t           a1b2c 7f00dead [unknown]
"""


def test_frames_name_their_library_and_stacks_start_with_their_thread() -> None:
    stacks = fold_perf_script(_PERF_SCRIPT, threads=True)
    assert stacks[f"{MAIN_THREAD};tupledealloc (libpython3.11.so.1.0)"] == 1
    # The offset is dropped; an unnamed frame above the leaf says nothing and is left out.
    assert stacks[f"{OTHER_THREAD};ossl_ml_dsa_sign (_rust.abi3.so)"] == 1
    assert stacks[
        f"{OTHER_THREAD};pthread_cond_signal@@GLIBC_2.3.2 (libc.so.6);"
        "entry_SYSCALL_64_after_hwframe [k];do_syscall_64 [k];__x64_sys_futex [k];"
        "try_to_wake_up [k];_raw_spin_unlock_irqrestore [k]"] == 1
    assert sum(stacks.values()) == 8


def test_without_threads_the_stacks_are_those_of_the_process() -> None:
    stacks = fold_perf_script(_PERF_SCRIPT)
    assert "gc_collect_main (libpython3.11.so.1.0)" in stacks
    assert not any(stack.startswith("[") for stack in stacks)


def test_each_sample_lands_in_the_native_code_it_ran() -> None:
    costs = categorize_native(fold_perf_script(_PERF_SCRIPT, threads=True))
    assert costs.total == 8
    assert costs.main_thread == 6
    names = [category.name for category in NATIVE_CATEGORIES]
    handoffs, syscalls, interrupts, crypto, gc, interpreter, libc = names[:7]
    assert costs.counts == {
        interpreter: 1,  # tupledealloc
        crypto: 1,  # ML-DSA in pyca's library
        handoffs: 1,  # the futex under a GIL hand-off
        syscalls: 1,  # a socket send
        interrupts: 1,  # a page fault under an allocation
        gc: 1,
        libc: 1,  # memmove
        "other": 1,  # a leaf perf could not name
    }


def test_perf_reads_libraries_only_when_asked() -> None:
    assert perf_script_arguments("/tmp/r.perf")[-1] == "comm,pid,tid,ip,sym"
    assert perf_script_arguments("/tmp/r.perf", libraries=True)[-1] == "comm,pid,tid,ip,sym,dso"


@pytest.mark.parametrize("option", ["--gil", "--blocking", "--native", "--nats"])
def test_py_spy_options_and_nats_are_refused_with_perf(
        option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--perf", option])
    assert exit_info.value.code == 2
    assert "--perf records with perf" in capsys.readouterr().err


_SEALING = """
import time
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem
key = mlkem.MLKEM768PrivateKey.generate()
suite = hpke.Suite(hpke.KEM.MLKEM768, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
print("ready", flush=True)
deadline = time.monotonic() + 4
while time.monotonic() < deadline:
    suite.encrypt(bytes(1024), key.public_key(), info=b"")
"""


@pytest.mark.skipif(not perf_can_record(), reason="perf is missing or may not record here")
def test_a_real_process_sealing_lands_mostly_in_pycas_crypto(tmp_path: Path) -> None:
    recording = tmp_path / "sealing.perf"
    sealing = subprocess.Popen([sys.executable, "-c", _SEALING], stdout=subprocess.PIPE)
    try:
        assert sealing.stdout is not None and sealing.stdout.readline() == b"ready\n"
        perf = subprocess.run(
            ["perf", *perf_record_arguments(sealing.pid, 1.5, str(recording))],
            capture_output=True, check=False, timeout=60)
        assert perf.returncode == 0, perf.stderr.decode(errors="replace")
    finally:
        sealing.kill()
        sealing.wait()
    script = subprocess.run(["perf", *perf_script_arguments(str(recording), libraries=True)],
                            capture_output=True, check=True)
    costs = categorize_native(fold_perf_script(script.stdout.decode(), threads=True))
    crypto = NATIVE_CATEGORIES[3].name
    assert costs.total > 100
    assert costs.main_thread == costs.total  # the loop has one thread
    # A seal is mostly ML-KEM: pyca's library file must still be where it runs.
    assert costs.counts.get(crypto, 0) > costs.total / 2

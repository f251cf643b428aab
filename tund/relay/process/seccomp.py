"""A seccomp filter for relay workers, stricter than the daemon (which has none).

Contract: :func:`install` (after ``PR_SET_NO_NEW_PRIVS``, the last step of the privilege
drop) makes every call in :data:`DENIED` fail with EPERM, and every ``ioctl`` whose
request is in :data:`DENIED_IOCTLS` (what would re-point or re-own the worker's own TUN
device: ``TUNSETOWNER``, ``TUNSETGROUP``, ``TUNSETPERSIST``, ...; ``TUNSETOFFLOAD`` stays
allowed). A deny list, not an allow list: CPython, its resolver thread and the transports
make calls an allow list would have to follow release by release. x86_64 only (the
numbers are per architecture; elsewhere it installs nothing and says so); x32 numbers are
refused outright. Raises OSError when the kernel refuses the filter.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import platform
import struct

from tund import libc

log = logging.getLogger("tund.relay.process.seccomp")
_MACHINE = platform.machine()  # read at import, before the privilege drop

_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
# classic BPF opcodes
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06

#: x86_64 system calls a worker never makes: exec (no shell for an intruder), tracing and
#: reading other processes, namespaces and mounts, keys, BPF, modules, kexec, reboot, ...
DENIED = {
    "execve": 59, "execveat": 322, "ptrace": 101, "process_vm_readv": 310,
    "process_vm_writev": 311, "mount": 165, "umount2": 166, "pivot_root": 155,
    "chroot": 161, "unshare": 272, "setns": 308, "keyctl": 250, "add_key": 248,
    "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
    "kexec_file_load": 320, "open_by_handle_at": 304, "reboot": 169, "swapon": 167,
    "swapoff": 168, "acct": 163, "iopl": 172, "ioperm": 173, "personality": 135,
    "fsopen": 430, "fsmount": 432, "move_mount": 429, "open_tree": 428,
}
_IOCTL = 16
#: TUN ioctls that change the device itself (<linux/if_tun.h>).
DENIED_IOCTLS = {
    "TUNSETIFF": 0x400454CA, "TUNSETPERSIST": 0x400454CB, "TUNSETOWNER": 0x400454CC,
    "TUNSETLINK": 0x400454CD, "TUNSETGROUP": 0x400454CE, "TUNSETQUEUE": 0x400454D9,
    "TUNSETIFINDEX": 0x400454DA, "TUNSETSTEERINGEBPF": 0x800454E0,
    "TUNSETFILTEREBPF": 0x800454E1, "TUNSETTXFILTER": 0x400454D1,
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program() -> bytes:
    """The filter (``struct sock_filter`` array) for x86_64."""
    deny = _RET_ERRNO | errno.EPERM
    calls, ioctls = sorted(DENIED.values()), sorted(DENIED_IOCTLS.values())
    out = [_insn(_LD_W_ABS, 4),  # arch
           _insn(_JEQ_K, _AUDIT_ARCH_X86_64, 1, 0),
           _insn(_RET_K, deny),  # another ABI (i386 through int 0x80): refused
           _insn(_LD_W_ABS, 0),  # nr
           _insn(_JGE_K, _X32_BIT, 0, 1),
           _insn(_RET_K, deny)]
    # then: n jumps (denied calls) | ioctl? | allow | load request | m jumps | allow | deny
    n, m = len(calls), len(ioctls)
    for i, nr in enumerate(calls):
        out.append(_insn(_JEQ_K, nr, n + m + 3 - i, 0))  # -> deny
    out.append(_insn(_JEQ_K, _IOCTL, 1, 0))  # an ioctl: look at its request
    out.append(_insn(_RET_K, _RET_ALLOW))
    out.append(_insn(_LD_W_ABS, 24))  # args[1], low 32 bits: the request
    for i, req in enumerate(ioctls):
        out.append(_insn(_JEQ_K, req, m - i, 0))  # -> deny
    out.append(_insn(_RET_K, _RET_ALLOW))
    out.append(_insn(_RET_K, deny))
    return b"".join(out)


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> bool:
    """Install the filter on this thread's process (threads started later inherit it);
    False (logged) where it does not apply. Raises OSError if the kernel refuses."""
    if _MACHINE != "x86_64":
        log.warning("seccomp: no filter for %s; workers run without one", _MACHINE)
        return False
    code = program()
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _Prog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    log.info("[#] seccomp: deny %d system calls and %d TUN ioctls (EPERM)", len(DENIED),
             len(DENIED_IOCTLS))
    libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog),
               what="PR_SET_SECCOMP")
    return True

"""Process titles and thread names (issue 15.11): what ps/top show for each process."""

from __future__ import annotations

from tund import proctitle


def test_titles() -> None:
    assert proctitle.daemon_title("/etc/tund/tunnels.toml") == "tund: daemon /etc/tund/tunnels.toml"
    assert proctitle.worker_title("wan0", "tun0") == "tund: worker wan0 (tun0)"
    assert proctitle.FORK_SERVER_TITLE == "tund: fork server"


def test_short_names_are_kept_whole() -> None:
    assert proctitle.worker_comm("wan0") == "relay:wan0"
    assert proctitle.worker_comm("123456789") == "relay:123456789"  # exactly 15 bytes


def test_long_names_sharing_a_start_get_different_comms() -> None:
    a = proctitle.worker_comm("office-berlin-primary")
    b = proctitle.worker_comm("office-berlin-backup")
    assert a != b
    for c in (a, b):
        assert len(c.encode()) == 15 and c.startswith("relay:offi") and c[10] == "~"
    assert proctitle.worker_comm("office-berlin-primary") == a  # stable across processes


def test_a_cut_never_splits_a_character() -> None:
    c = proctitle.worker_comm("bürö-münchen-eins")
    assert len(c.encode()) <= 15
    c.encode().decode()  # valid UTF-8

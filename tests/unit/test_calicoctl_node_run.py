"""Pure parts of the node/container/status/checksystem commands: argv building, parsing, tables."""

from __future__ import annotations

import gzip
import io
import subprocess

import pytest

from bird_control.protocol import BirdProtocol, ReplyLine, parse_protocols
from calico_testing.netns import wait_for
from calicoctl import checksystem, cli, container, netns, node_run, status


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(argv, stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


# ---- node run ---------------------------------------------------------------------

def test_docker_argv_has_the_classic_flags():
    opts = node_run.parse_options(["--ip=10.0.0.5", "--ip6=fd00::5", "--as=65001", "--name=node1",
                                   "--node-image=calico/node:v9", "--log-dir=/srv/logs"])
    argv = node_run.docker_argv(opts, {"ETCD_ENDPOINTS": "http://10.0.0.1:2379", "SECRET": "x"})
    assert argv[:3] == ["docker", "run", "-d"]
    assert "--net=host" in argv and "--restart=always" in argv and "--name=calico-node" in argv
    caps = [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"]
    assert {"NET_ADMIN", "NET_RAW", "SYS_ADMIN"} <= set(caps)
    envs = {argv[i + 1] for i, a in enumerate(argv) if a == "-e"}
    assert envs == {"HOSTNAME=node1", "NODENAME=node1", "IP=10.0.0.5", "IP6=fd00::5", "AS=65001",
                    "ETCD_ENDPOINTS=http://10.0.0.1:2379"}
    vols = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert vols == ["/srv/logs:/var/log/calico", "/var/run/calico:/var/run/calico", "/lib/modules:/lib/modules:ro"]
    assert argv[-1] == "calico/node:v9"
    assert "--privileged" not in argv
    assert not any("SECRET" in a for a in argv)


def test_docker_argv_defaults_and_tls_mounts(tmp_path):
    opts = node_run.parse_options(["--name=n2", "--disable-networking"])
    env = {"ETCD_AUTHORITY": "etcd:2379", "ETCD_SCHEME": "https", "ETCD_CA_CERT_FILE": str(tmp_path / "ca.pem"),
           "ETCD_CERT_FILE": str(tmp_path / "c.pem"), "ETCD_KEY_FILE": str(tmp_path / "k.pem")}
    argv = node_run.docker_argv(opts, env)
    envs = {argv[i + 1] for i, a in enumerate(argv) if a == "-e"}
    assert "IP=autodetect" in envs and "CALICO_NETWORKING=false" in envs
    assert "ETCD_AUTHORITY=etcd:2379" in envs and "ETCD_SCHEME=https" in envs
    assert "ETCD_KEY_FILE=/etc/calico/certs/key.pem" in envs
    vols = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert f"{tmp_path}/k.pem:/etc/calico/certs/key.pem:ro" in vols
    assert "/var/log/calico:/var/log/calico" in vols
    assert argv[-1] == "calico/node:latest"


def test_foreground_env_keeps_ours_and_adds_the_nodes():
    opts = node_run.parse_options(["--runtime=none", "--name=n3", "--ip=10.1.2.3", "--log-dir=/tmp/x"])
    env = node_run.foreground_env(opts, {"PATH": "/bin", "CALICO_RUN_DIR": "/tmp/run",
                                         "ETCD_ENDPOINTS": "http://127.0.0.1:1"})
    assert env["PATH"] == "/bin" and env["CALICO_RUN_DIR"] == "/tmp/run" and env["CALICO_LOG_DIR"] == "/tmp/x"
    assert env["NODENAME"] == "n3" and env["IP"] == "10.1.2.3" and env["ETCD_ENDPOINTS"] == "http://127.0.0.1:1"


@pytest.mark.parametrize("args, named", [
    (["--ip=10.0.0.300"], "--ip"), (["--ip=fd00::1"], "--ip"), (["--ip6=10.0.0.1"], "--ip6"),
    (["--as=0"], "--as"), (["--as=notanumber"], "--as"), (["--runtime=rkt"], "--runtime"),
    (["--log-dir=relative"], "--log-dir"), (["--name=bad/name"], "--name"), (["--node-image=-x"], "--node-image"),
    (["--bogus"], "--bogus"), (["extra"], "node run extra"),
])
def test_node_run_bad_argument_is_one_line_exit_2(args, named):
    rc, out, err = _run(["node", "run", *args])
    assert rc == 2
    assert err.count("\n") == 1 and named in err
    assert out == ""


def test_node_run_dry_run_prints_the_docker_command():
    rc, out, _ = _run(["node", "run", "--dry-run", "--name=dry", "--ip=10.9.9.9"])
    assert rc == 0
    assert out.startswith("docker run -d --net=host") and "-e IP=10.9.9.9" in out


# ---- container grammar ------------------------------------------------------------

@pytest.mark.parametrize("argv, named", [
    (["container", "add", "ct-no-such-ns-xyz", "ipv4"], "ct-no-such-ns-xyz"),
    (["container", "add", "/nonexistent/ns", "ipv4"], "/nonexistent/ns"),
    (["container", "add", "bad name!", "ipv4"], "bad name!"),
    (["container", "add", "/proc/self/ns/net", "10.0.0.999"], "10.0.0.999"),
    (["container", "add", "/proc/self/ns/net", "ipv4", "--interface=way-too-long-ifname"], "--interface"),
    (["container", "/proc/self/ns/net", "profile", "set", "bad/profile"], "bad/profile"),
    (["container", "/proc/self/ns/net", "profile", "append"], "profile append"),
    (["container", "/proc/self/ns/net", "ip", "add", "nope"], "nope"),
    (["container", "/proc/self/ns/net", "frobnicate", "x"], "container"),
])
def test_container_bad_arguments_exit_2_naming_them(argv, named):
    rc, out, err = _run(argv)
    assert rc == 2, err
    assert named in err and err.count("\n") == 1


def test_namespace_path_gives_a_stable_workload_id():
    ref = netns.resolve("/proc/self/ns/net")
    assert ref.workload_id == "proc_self_ns_net" and ref.path == "/proc/self/ns/net"


def test_host_ifname_is_cali_plus_11_hex():
    assert container.host_ifname("0123456789abcdef0123456789abcdef") == "cali0123456789a"
    assert len(container.host_ifname("f" * 32)) == 15


def test_inner_config_routes_via_link_local_gateways():
    lines = container.inner_config("eth0", ["10.65.0.1"], ["fd00::1"], "fe80::1")
    assert "addr add 10.65.0.1/32 dev eth0" in lines
    assert "route replace 169.254.1.1 dev eth0 scope link" in lines
    assert "route replace default via 169.254.1.1 dev eth0" in lines
    assert "addr add fd00::1/128 dev eth0 nodad" in lines
    assert "route replace ::/0 via fe80::1 dev eth0" in lines
    assert not any("169.254" in ln for ln in container.inner_config("eth0", [], ["fd00::1"], "fe80::1"))


def test_eui64_link_local():
    assert netns.eui64_link_local("52:54:00:12:34:56") == "fe80::5054:ff:fe12:3456"


# ---- status -----------------------------------------------------------------------

def test_peer_rows_from_show_protocols():
    reply = [ReplyLine(2002, "name     proto    table    state  since       info"),
             ReplyLine(1002, "device1  Device   master   up     20:00:01"),
             ReplyLine(1002, "Mesh_10_99_0_2 BGP      master   up     20:00:05    Established"),
             ReplyLine(1006, "  BGP state:          Established"),
             ReplyLine(1006, "    Neighbor address: 10.99.0.2"),
             ReplyLine(1002, "Global_fd00__1 BGP      master   start  20:00:01    Active        Socket: Connection refused"),
             ReplyLine(1002, "Node_10_0_0_9 BGP      master   start  20:00:01    Connect"),
             ReplyLine(0, "")]
    rows = status.peer_rows(parse_protocols(reply))
    assert rows == [["10.99.0.2", "node-to-node mesh", "up", "20:00:05", "Established"],
                    ["fd00::1", "global", "start", "20:00:01", "Active        Socket: Connection refused"],
                    ["10.0.0.9", "node specific", "start", "20:00:01", "Connect"]]


def test_peer_address_decodes_names_when_bird_gives_no_neighbor():
    assert status.peer_address("Mesh_192_168_1_1", None) == "192.168.1.1"
    assert status.peer_address("Node_fd80_24e2__1", None) == "fd80:24e2::1"
    p = BirdProtocol("Mesh_x", "BGP", "master", "up", "t", "Established", {"Neighbor address": "1.2.3.4"})
    assert status.peer_rows([p])[0][0] == "1.2.3.4"


# ---- checksystem ------------------------------------------------------------------

def _fake_kernel(tmp_path, config: str, modules=(), proc_files=()) -> checksystem.Kernel:
    proc, sysd = tmp_path / "proc", tmp_path / "sys"
    (proc / "net").mkdir(parents=True)
    (proc / "sys/net/ipv4").mkdir(parents=True)
    (proc / "sys/net/ipv4/ip_forward").write_text("0\n")
    (sysd / "module").mkdir(parents=True)
    for m in modules:
        (sysd / "module" / m).mkdir()
    for f in proc_files:
        (proc / f).write_text("")
    with gzip.open(proc / "config.gz", "wt") as fh:
        fh.write(config)
    return checksystem.Kernel(str(proc), str(sysd), modules_dir=str(tmp_path / "nomods"))


def test_kernel_checks_name_what_is_missing(tmp_path):
    k = _fake_kernel(tmp_path, "CONFIG_NF_TABLES=y\nCONFIG_VETH=m\n# CONFIG_IP_SET is not set\n",
                     modules=["nf_conntrack"])
    res = {c.name: c for c in checksystem.kernel_checks(k)}
    assert res["kernel: iptables (IPv4)"].result == "OK"
    assert res["kernel: veth"].result == "OK"
    assert res["kernel: conntrack"].result == "OK"
    assert res["kernel: ipset"].result == "MISSING"
    assert res["kernel: iptables set match"].result == "MISSING"
    assert res["kernel: ipip"].result == "WARNING"
    assert "ip_forward=0" in res["ip_forward"].detail


def test_binary_checks_follow_path(tmp_path):
    for b in checksystem.BINARIES:
        if b != "ipset":
            p = tmp_path / b
            p.write_text("#!/bin/sh\n")
            p.chmod(0o755)
    res = {c.name: c.result for c in checksystem.binary_checks({"PATH": str(tmp_path)})}
    assert res.pop("binary: ipset") == "MISSING"
    assert set(res.values()) == {"OK"}
    text, rc = checksystem.report(checksystem.binary_checks({"PATH": str(tmp_path)}))
    assert rc == 1 and text.splitlines()[-1] == "Missing: binary: ipset"


def test_report_passes_when_nothing_missing():
    checks = [checksystem.Check("a", "OK"), checksystem.Check("b", "WARNING", "x")]
    text, rc = checksystem.report(checks)
    assert rc == 0 and "meets the requirements" in text


def test_cli_registers_the_node_groups():
    for g in ("container", "status", "checksystem", "diags"):
        assert g in cli.GROUPS
    rc, out, _ = _run(["node", "--help"])
    assert rc == 0 and all(w in out for w in ("run", "stop", "remove", "show"))


def test_status_finds_node_programs_by_argv(tmp_path):
    fake = tmp_path / "calico-felix"
    fake.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(fake), "30"])
    try:
        # right after fork the child's argv is still ours: wait for the exec
        wait_for(lambda: {p.pid: p.program for p in status.node_processes()}.get(proc.pid) == "calico-felix",
                 timeout=5, what="the fake calico-felix to show up")
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in {p.pid for p in status.node_processes()}

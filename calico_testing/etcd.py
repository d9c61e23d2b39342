"""A real etcd server for tests, on a free port, optionally inside a network namespace.

The data dir survives stop()/start() so a test can restart etcd "in place" and
check that clients resync without losing anything.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class EtcdServer:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None, netns: str | None = None,
                 data_dir: str | None = None, name: str = "test", tls: dict | None = None):
        self.host = host
        self.port = port or free_port()
        self.peer_port = free_port()
        self.netns = netns
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="etcd-test-")
        os.makedirs(self.data_dir, exist_ok=True)
        self.name = name
        self.tls = tls  # {"ca": path, "cert": path, "key": path} for client-cert TLS
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.data_dir, "etcd.log")

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def start(self, timeout: float = 15.0) -> EtcdServer:
        url = f"{self.scheme}://{self.host}:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = self._prefix() + [
            "etcd", "--name", self.name, "--data-dir", os.path.join(self.data_dir, "data"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}", "--log-level", "error", "--logger", "zap",
        ]
        if self.tls:
            cmd += ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"],
                    "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {open(self.log_path).read()[-2000:]}")
            if self.healthy():
                return self
            time.sleep(0.1)
        raise RuntimeError("etcd did not become healthy")

    def etcdctl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        env = dict(os.environ, ETCDCTL_API="3")
        cmd = self._prefix() + ["etcdctl", f"--endpoints={self.endpoint}", "--dial-timeout=2s",
                                "--command-timeout=5s"]
        if self.tls:
            cmd += [f"--cacert={self.tls['ca']}", f"--cert={self.tls['client_cert']}",
                    f"--key={self.tls['client_key']}"]
        r = subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, input=input)
        if check and r.returncode != 0:
            raise RuntimeError(f"etcdctl {args}: {r.stderr}")
        return r.stdout

    def healthy(self) -> bool:
        try:
            self.etcdctl("endpoint", "health")
            return True
        except RuntimeError:
            return False

    def put(self, key: str, value: str) -> None:
        self.etcdctl("put", key, "--", value) if value.startswith("-") else self.etcdctl("put", key, value)

    def get(self, key: str) -> str | None:
        out = self.etcdctl("get", "--print-value-only", key)
        return out[:-1] if out.endswith("\n") else (out or None)

    def delete(self, key: str, prefix: bool = False) -> None:
        self.etcdctl("del", key, *(["--prefix"] if prefix else []))

    def keys(self, prefix: str = "/calico") -> list[str]:
        return [k for k in self.etcdctl("get", "--prefix", "--keys-only", prefix).splitlines() if k]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def make_tls_certs(directory: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict:
    """A CA, a server cert (SANs = hosts) and a client cert made with openssl, for EtcdServer(tls=...).

    Also a client cert from an unrelated CA ("rogue_cert"/"rogue_key"), so a test
    can check that etcd refuses it.  Keys are written 0600.
    """
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    def path(name: str) -> str:
        return os.path.join(directory, name)

    sans = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    for ca in ("ca", "rogue-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=test-{ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    for name, ca, ext in (("server", "ca", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth"),
                          ("client", "ca", "extendedKeyUsage=clientAuth"),
                          ("rogue", "rogue-ca", "extendedKeyUsage=clientAuth")):
        with open(path(f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=test-{name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    for name in ("ca", "rogue-ca", "server", "client", "rogue"):
        os.chmod(path(f"{name}.key"), 0o600)
    return {"ca": path("ca.pem"), "cert": path("server.pem"), "key": path("server.key"),
            "client_cert": path("client.pem"), "client_key": path("client.key"),
            "rogue_cert": path("rogue.pem"), "rogue_key": path("rogue.key")}

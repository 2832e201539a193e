"""TLS on both transports, with certificates made here (a CA, a server certificate for 127.0.0.1,
a client certificate): unmodified tritonclient HTTP (ssl=True) and gRPC (ssl=True + root
certificates) and curl --cacert; then mutual TLS, where a client without a certificate is refused."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import ssl
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tritonclient.utils import InferenceServerException

from models import add_model
from server_process import MODES, ServerProcess, mode_args

pytestmark = pytest.mark.integration


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
          *, ca: bool = False, server: bool = False) -> x509.Certificate:  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    certs = {
        "ca": _cert("test CA", ca_key, "test CA", ca_key, ca=True),
        "server": _cert("127.0.0.1", server_key, "test CA", ca_key, server=True),
        "client": _cert("a client", client_key, "test CA", ca_key),
    }
    out = {}
    for name, cert in certs.items():
        out[name] = root / f"{name}.pem"
        out[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for name, key in (("server", server_key), ("client", client_key)):
        out[f"{name}-key"] = root / f"{name}-key.pem"
        out[f"{name}-key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return out


def tls_server(tmp_path: Path, pki: dict[str, Path], mutual: bool, mode: str) -> ServerProcess:
    repo = tmp_path / "repo"
    add_model(repo, "add", versions=(1,))
    args = ["--tls-cert", str(pki["server"]), "--tls-key", str(pki["server-key"])]
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if mutual:
        args += ["--tls-client-ca", str(pki["ca"])]
        context.load_cert_chain(str(pki["client"]), str(pki["client-key"]))
    server = ServerProcess(repo, tmp_path / "server.log", args=(*args, *mode_args(mode)), ready_context=context)
    server.start()
    return server


def http_infer(server: ServerProcess, ssl_options: dict[str, str]) -> np.ndarray:
    client = thttp.InferenceServerClient(server.http_url, ssl=True, ssl_options=ssl_options)
    inp = thttp.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    try:
        return np.asarray(client.infer("add", [inp]).as_numpy("y"))
    finally:
        client.close()


def grpc_infer(server: ServerProcess, **credentials: str) -> np.ndarray:
    client = tgrpc.InferenceServerClient(server.grpc_url, ssl=True, **credentials)
    inp = tgrpc.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    try:
        return np.asarray(client.infer("add", [inp], client_timeout=10).as_numpy("y"))
    finally:
        client.close()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("mode", MODES)
def test_tls_with_tritonclient_http_grpc_and_curl(tmp_path: Path, pki: dict[str, Path], mode: str) -> None:
    server = tls_server(tmp_path, pki, mutual=False, mode=mode)
    try:
        assert f"HTTP https://127.0.0.1:{server.http_port}" in server.log_path.read_text()
        want = np.full((1, 4), 2.0, np.float32)
        np.testing.assert_array_equal(http_infer(server, {"ca_certs": str(pki["ca"])}), want)
        np.testing.assert_array_equal(grpc_infer(server, root_certificates=str(pki["ca"])), want)
        if shutil.which("curl"):
            ok = curl("--cacert", str(pki["ca"]), f"https://{server.http_url}/v2/health/ready")
            assert ok.stdout == "200"
            untrusted = curl(f"https://{server.http_url}/v2/health/ready")  # system CAs only
            assert untrusted.returncode != 0
        plain = tgrpc.InferenceServerClient(server.grpc_url)  # plain text to the TLS gRPC port
        inp = tgrpc.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            plain.infer("add", [inp], client_timeout=5)
        plain.close()
    finally:
        assert server.stop() == 0, server.log()


@pytest.mark.parametrize("mode", MODES)
def test_mutual_tls_refuses_clients_without_a_certificate(tmp_path: Path, pki: dict[str, Path], mode: str) -> None:
    server = tls_server(tmp_path, pki, mutual=True, mode=mode)
    try:
        want = np.full((1, 4), 2.0, np.float32)
        with_cert = {"ca_certs": str(pki["ca"]), "certfile": str(pki["client"]), "keyfile": str(pki["client-key"])}
        np.testing.assert_array_equal(http_infer(server, with_cert), want)
        np.testing.assert_array_equal(
            grpc_infer(
                server,
                root_certificates=str(pki["ca"]),
                private_key=str(pki["client-key"]),
                certificate_chain=str(pki["client"]),
            ),
            want,
        )
        with pytest.raises(Exception):  # noqa: B017  (the TLS handshake fails: the client error type varies)
            http_infer(server, {"ca_certs": str(pki["ca"])})
        with pytest.raises(InferenceServerException):
            grpc_infer(server, root_certificates=str(pki["ca"]))
        if shutil.which("curl"):
            assert curl("--cacert", str(pki["ca"]), f"https://{server.http_url}/v2/health/ready").stdout != "200"
            ok = curl("--cacert", str(pki["ca"]), "--cert", str(pki["client"]), "--key", str(pki["client-key"]),
                      f"https://{server.http_url}/v2/health/ready")  # fmt: skip
            assert ok.stdout == "200"
    finally:
        assert server.stop() == 0, server.log()

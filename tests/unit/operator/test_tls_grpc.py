"""The operator's certificates work for gRPC mutual TLS, as the nodes use them (real sockets)."""

from __future__ import annotations

import grpc
from beco_operator import keyring, tls
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .conftest import NOW, make_spec


async def test_member_and_client_certificates_make_a_mutual_tls_call() -> None:
    ca, ca_key = tls.make_ca("demo", "ns", NOW)
    slot = keyring.desired_slots("demo", "ns", make_spec())[3]  # demo-user-a-0
    cert, key = tls.issue(ca, ca_key, slot.name, tls.dns_names(slot.host, "demo", "ns"), NOW)
    client_cert, client_key = tls.issue(ca, ca_key, "demo-client", [], NOW)

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    creds = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        for name in (slot.host, "demo.ns.svc"):  # the member's own name and the client Service
            channel = grpc.aio.secure_channel(
                f"127.0.0.1:{port}",
                grpc.ssl_channel_credentials(ca, client_key, client_cert),
                options=[("grpc.ssl_target_name_override", name)],
            )
            async with channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # A name the certificate does not carry is refused.
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{port}",
            grpc.ssl_channel_credentials(ca, client_key, client_cert),
            options=[("grpc.ssl_target_name_override", "someone-else.ns.svc")],
        )
        async with channel:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=3
                )
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
            else:
                raise AssertionError("a wrong server name was accepted")
    finally:
        await server.stop(None)

"""The operator's own Kubernetes client (`modelseal.k8s.api`, `modelseal.k8s.access`)
against a real API server: the answers the reconciler relies on (not found, conflict,
forbidden, pages), client-certificate login from a kubeconfig's data, and a
ServiceAccount token that rotates under it (the kubelet rewrites projected tokens; a 401
makes the client read the file again, once)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.operator_helpers import OpsEnv

from modelseal.k8s import api as k8s
from modelseal.k8s.access import ClusterAccess, from_kubeconfig
from modelseal.k8s.api import ApiError, Kube, KubeClient


def test_answers_the_reconciler_relies_on(ops_cluster: OpsEnv) -> None:
    ns = ops_cluster.namespace("client")
    calls: list[tuple[str, str, int]] = []

    async def scenario() -> None:
        # the admin kubeconfig logs in with a client certificate from its -data fields
        kube = Kube(ops_cluster.cluster.kube_client(), on_call=lambda *c: calls.append(c))
        try:
            assert await kube.get(k8s.CONFIG_MAP, ns, "absent") is None
            body = {"metadata": {"name": "cm", "labels": {"a": "1"}}, "data": {"n": "1" * 30}}
            made = await kube.create(k8s.CONFIG_MAP, ns, body)
            assert made["metadata"]["uid"] and made["data"] == body["data"]
            try:
                await kube.create(k8s.CONFIG_MAP, ns, body)
                raise AssertionError("a second create of one name was accepted")
            except ApiError as exc:
                assert exc.conflict and exc.reason == "AlreadyExists" and "cm" in exc.message
            patched = await kube.merge_patch(k8s.CONFIG_MAP, ns, "cm", {"data": {"m": "2"}})
            assert patched["data"] == {"n": "1" * 30, "m": "2"}
            for i in range(7):
                await kube.create(k8s.CONFIG_MAP, ns, {"metadata": {"name": f"p{i}"}})
            pages = [page async for page in kube.list_pages(k8s.CONFIG_MAP, ns, limit=3)]
            names = [o["metadata"]["name"] for page in pages for o in page]
            assert [len(p) for p in pages][:3] == [3, 3, 3] and "cm" in names
            assert len(names) == len(set(names)) == len(await kube.list(k8s.CONFIG_MAP, ns))
            assert [o["metadata"]["name"] for o in await kube.list(k8s.CONFIG_MAP, ns, "a=1")] == [
                "cm"
            ]
            # metadata only (what the watch cache's listing at start reads): no data
            slim = [
                o
                async for page in kube.list_pages(k8s.CONFIG_MAP, ns, limit=4, metadata_only=True)
                for o in page
            ]
            assert sorted(o["metadata"]["name"] for o in slim) == sorted(names)
            assert all("data" not in o and o["metadata"]["namespace"] == ns for o in slim)
            assert {o.get("kind") for o in slim} == {"PartialObjectMetadata"}
            assert await kube.delete(k8s.CONFIG_MAP, ns, "cm", uid=made["metadata"]["uid"])
            assert not await kube.delete(k8s.CONFIG_MAP, ns, "cm")
        finally:
            await kube.close()

    asyncio.run(scenario())
    assert ("GET", "ConfigMap", 404) in calls and ("POST", "ConfigMap", 409) in calls
    assert ("DELETE", "ConfigMap", 200) in calls


def test_a_rotated_token_is_read_again_on_401(ops_cluster: OpsEnv, tmp_path: Path) -> None:
    ns = ops_cluster.namespace("token")
    ops_cluster.kubectl("create", "serviceaccount", "reader", "-n", ns)
    ops_cluster.kubectl(
        "create", "role", "cm-reader", "-n", ns, "--verb=get", "--resource=configmaps"
    )
    ops_cluster.kubectl(
        "create", "rolebinding", "reader", "-n", ns, "--role=cm-reader",
        f"--serviceaccount={ns}:reader",
    )  # fmt: skip
    good = ops_cluster.kubectl("create", "token", "reader", "-n", ns).strip()
    admin = from_kubeconfig([ops_cluster.cluster.kubeconfig])
    token_file = tmp_path / "token"
    token_file.write_text("not-a-token")
    access = ClusterAccess(server=admin.server, ca_pem=admin.ca_pem, token_file=token_file)

    async def scenario() -> list[int | str]:
        kube = Kube(KubeClient(access))
        seen: list[int | str] = []
        try:
            for _ in range(2):
                try:
                    found = await kube.get(k8s.CONFIG_MAP, ns, "absent")
                    seen.append("absent" if found is None else "found")
                except ApiError as exc:
                    seen.append(exc.status)
                token_file.write_text(good)  # the kubelet rotates it
            try:
                await kube.get(k8s.SECRET, ns, "any")
            except ApiError as exc:
                seen.append(exc.status)  # authenticated, not allowed
        finally:
            await kube.close()
        return seen

    # A bad token: 401 (read again at once: still bad); after the rotation the next
    # call's 401 reads the new token, and the retry is answered.
    assert asyncio.run(scenario()) == [401, "absent", 403]

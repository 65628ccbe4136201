"""The real huggingface_hub client against the local Hub server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.fixtures.hub_repos import ADAPTER, BASE, FINETUNES, GATED, QUANTIZED, SECOND_LEVEL


@pytest.fixture
def api(hub) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=False)


def _listing_requests(hub) -> list[str]:
    return [path for method, path, _ in hub.requests if path.startswith("/api/models?") or path == "/api/models"]


def test_binds_loopback_only(hub):
    """Reachable on 127.0.0.1 and nowhere else: another loopback address (which a server bound to
    every interface would answer) refuses the connection."""
    import socket

    port = hub.httpd.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", port), timeout=5):
        pass


def test_list_models_follows_link_pagination_across_pages(hub, api, hub_layout):
    children = [r for r, rel in hub_layout.items() if rel == "finetune" and r != SECOND_LEVEL]
    got = [m.id for m in api.list_models(filter=f"base_model:finetune:{BASE}", expand=["sha", "tags"])]
    assert sorted(got) == sorted(children) and len(got) == len(set(got))
    pages = _listing_requests(hub)
    assert len(pages) == -(-len(children) // 3)  # page size 3
    assert all("cursor=" in p for p in pages[1:])


def test_list_filters_search_author_sort_limit_expand(api):
    assert {m.id for m in api.list_models(filter=["math", f"base_model:adapter:{BASE}"])} == {ADAPTER}
    assert {m.id for m in api.list_models(filter=f"base_model:quantized:{BASE}")} == {QUANTIZED}
    assert {m.id for m in api.list_models(author="other")} == {r for r in FINETUNES if r.startswith("other/")}
    assert all("math" in m.id for m in api.list_models(search="MATH"))
    assert len(list(api.list_models(sort="last_modified", limit=2))) == 2
    m = next(iter(api.list_models(search="tiny-llama-math-v2", expand=["cardData", "sha", "gated", "lastModified"])))
    assert m.card_data.base_model == "acme/tiny-llama-math" and len(m.sha) == 40 and m.gated is False
    assert m.downloads is None  # expand returns only what was asked
    with pytest.raises(ValueError):  # the listing refuses model_info-only expands (400 -> BadRequestError)
        list(api.list_models(expand=["childrenModelCount"]))


def test_model_info_revisions_tree_and_tree_metadata(api):
    info = api.model_info(SECOND_LEVEL, files_metadata=True)
    assert "base_model:finetune:acme/tiny-llama-math" in info.tags
    assert api.model_info(SECOND_LEVEL, revision=info.sha).sha == info.sha
    st = {s.rfilename: s for s in info.siblings}
    assert st["model.safetensors"].lfs is not None and st["config.json"].lfs is None
    assert info.safetensors.total > 0
    assert {f.path for f in api.list_repo_tree(SECOND_LEVEL)} == set(st)
    assert api.model_info(BASE, expand=["childrenModelCount"]).children_model_count["adapter"] == 1
    assert api.model_info(ADAPTER, expand=["baseModels"]).base_models == {"relation": "adapter",
                                                                          "models": [{"id": BASE}]}


def test_downloads_and_ranged_header_reads(hub, api, tmp_path):
    path = hf_hub_download(BASE, "config.json", endpoint=hub.endpoint, token=False, cache_dir=tmp_path)
    assert '"LlamaForCausalLM"' in open(path).read()
    meta = api.get_safetensors_metadata(BASE)
    assert "model.embed_tokens.weight" in meta.files_metadata["model.safetensors"].tensors
    assert any(status == 206 for _, p, status in hub.requests if p.endswith("/model.safetensors"))
    snap = snapshot_download(ADAPTER, endpoint=hub.endpoint, token=False, cache_dir=tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in Path(snap).iterdir()}


def test_errors_carry_hub_error_codes(hub, api, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(BASE, revision="v9")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(BASE, "missing.json", endpoint=hub.endpoint, token=False, cache_dir=tmp_path)
    assert api.model_info(GATED).gated == "manual"  # metadata stays public
    with pytest.raises(GatedRepoError):
        hf_hub_download(GATED, "config.json", endpoint=hub.endpoint, token=False, cache_dir=tmp_path)
    hub.access_tokens.add("hf_granted")
    path = hf_hub_download(GATED, "config.json", endpoint=hub.endpoint, token="hf_granted", cache_dir=tmp_path)
    assert path.endswith("config.json")


def test_injected_rate_limit_is_answered_like_the_hub(hub, api):
    hub.inject(r"^/api/models/", 429, times=1, reset_s=7)
    with pytest.raises(Exception) as err:  # model_info does not retry by itself
        api.model_info(BASE)
    resp = err.value.response
    assert resp.status_code == 429 and resp.headers["RateLimit"] == '"api";r=0;t=7'
    assert api.model_info(BASE).id == BASE


def test_create_repo_and_upload_folder_publish_a_model(hub_dir, tmp_path):
    import filecmp
    import shutil

    from zoo.hub_server import HubServer

    root = tmp_path / "hub"
    shutil.copytree(hub_dir / BASE, root / BASE)
    source = hub_dir / "acme/tiny-llama-math"
    with HubServer(root, writable=True) as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_local")
        assert api.create_repo("team/merged") == f"{hub.endpoint}/team/merged"
        api.create_repo("team/merged", exist_ok=True)
        with pytest.raises(Exception, match="409"):
            api.create_repo("team/merged")
        commit = api.upload_folder(repo_id="team/merged", folder_path=source, commit_message="merge")
        info = api.model_info("team/merged")
        assert info.sha == commit.oid and f"base_model:finetune:{BASE}" in info.tags
        assert [m.id for m in api.list_models(filter=f"base_model:{BASE}")] == ["team/merged"]
        got = hf_hub_download("team/merged", "model.safetensors", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
        assert filecmp.cmp(got, source / "model.safetensors", shallow=False)
        assert api.upload_folder(repo_id="team/merged", folder_path=source).oid == commit.oid  # nothing changed
        api.delete_file("generation_config.json", "team/merged")
        assert "generation_config.json" not in {s.rfilename for s in api.model_info("team/merged").siblings}
        with pytest.raises(RemoteEntryNotFoundError):
            api.delete_file("nope.json", "team/merged")
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "README.md").write_text("---\nbase_model: [unclosed\n---\n")
        with pytest.raises(ValueError, match="Invalid metadata in README.md"):
            api.upload_folder(repo_id="team/merged", folder_path=bad)
        with pytest.raises(RepositoryNotFoundError):
            api.upload_folder(repo_id="team/absent", folder_path=source)
    with HubServer(root) as hub:  # read-only unless told
        with pytest.raises(Exception, match="403"):
            HfApi(endpoint=hub.endpoint, token="hf_local").create_repo("team/other")


def test_sorted_pagination_keeps_order_across_pages(hub_dir, hub_layout):
    from zoo.hub_server import HubServer

    stats = {rid: {"likes": i % 4, "downloads": 10 * i} for i, rid in enumerate(sorted(hub_layout))}
    with HubServer(hub_dir, page_size=2, stats=stats) as hub:
        got = list(HfApi(endpoint=hub.endpoint, token=False).list_models(sort="likes", expand=["likes"]))
        pages = len(_listing_requests(hub))
    keys = [(-m.likes, m.id) for m in got]
    assert keys == sorted(keys) and {m.id for m in got} == set(hub_layout) and len(got) == len(hub_layout)
    assert pages == -(-len(hub_layout) // 2)


def _hub_with_a_model(hub_dir, tmp_path) -> Path:
    import shutil

    root = tmp_path / "hub"
    shutil.copytree(hub_dir / BASE, root / BASE)
    return root


def _status(call) -> int:
    with pytest.raises(HfHubHTTPError) as err:
        call()
    return err.value.response.status_code


def test_writes_need_writable_or_an_access_token(hub_dir, tmp_path):
    """A served folder is read-only unless the operator says otherwise; refusals are the Hub's
    own statuses, so huggingface_hub raises its usual errors."""
    from tests.bad_input_cases import snapshot
    from zoo.hub_server import HubServer

    root = _hub_with_a_model(hub_dir, tmp_path)
    before = snapshot(root)
    upload = {"path_or_fileobj": b'{"x": 1}', "path_in_repo": "notes.json", "repo_id": BASE}
    with HubServer(root) as hub:
        for token in (False, "hf_any"):
            api = HfApi(endpoint=hub.endpoint, token=token)
            assert _status(lambda: api.upload_file(**upload)) == 403
            delete = [CommitOperationDelete("config.json")]
            assert _status(lambda: api.create_commit(BASE, delete, commit_message="rm")) == 403
            assert _status(lambda: api.create_repo("team/new")) == 403
        assert HfApi(endpoint=hub.endpoint, token=False).model_info(BASE).id == BASE  # reads are open
    assert snapshot(root) == before
    with HubServer(root, access_tokens={"hf_writer"}) as hub:
        assert _status(lambda: HfApi(endpoint=hub.endpoint, token="hf_other").upload_file(**upload)) == 401
        assert snapshot(root) == before
        HfApi(endpoint=hub.endpoint, token="hf_writer").upload_file(**upload)
    assert (root / BASE / "notes.json").read_bytes() == b'{"x": 1}'
    with HubServer(root, writable=True) as hub:
        HfApi(endpoint=hub.endpoint, token=False).create_commit(
            BASE, [CommitOperationAdd("more.json", b"{}")], commit_message="anyone may write")
    assert (root / BASE / "more.json").read_bytes() == b"{}"


def test_writes_never_go_through_a_symlink(hub_dir, tmp_path):
    """Reads follow the operator's symlinks; a write into a symlinked repo, org or subfolder is
    refused and nothing lands outside the served folder."""
    import shutil

    from tests.bad_input_cases import snapshot
    from zoo.hub_server import HubServer

    root = _hub_with_a_model(hub_dir, tmp_path)
    outside = tmp_path / "outside"
    shutil.copytree(hub_dir / BASE, outside / "model")
    (outside / "org").mkdir()
    (outside / "data").mkdir()
    (root / "team").mkdir()
    (root / "team" / "linked").symlink_to(outside / "model")  # a repo folder that is a symlink
    (root / "evil").symlink_to(outside / "org")  # an org folder that is a symlink
    (root / BASE / "data").symlink_to(outside / "data")  # a subfolder of a real repo
    before = snapshot(outside)
    with HubServer(root, writable=True) as hub:
        api = HfApi(endpoint=hub.endpoint, token=False)
        assert "config.json" in {s.rfilename for s in api.model_info("team/linked").siblings}
        got = hf_hub_download("team/linked", "config.json", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
        assert Path(got).read_bytes() == (outside / "model" / "config.json").read_bytes()
        assert _status(lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x.json",
                                               repo_id="team/linked")) == 403
        assert _status(lambda: api.delete_file("config.json", "team/linked")) == 403
        assert _status(lambda: api.create_repo("evil/new")) == 403
        mixed = [CommitOperationAdd("ok.json", b"1"), CommitOperationAdd("data/x.json", b"2")]
        assert _status(lambda: api.create_commit(BASE, mixed, commit_message="mixed")) == 403
        assert not (root / BASE / "ok.json").exists()  # the whole commit is refused, not half of it
        api.upload_file(path_or_fileobj=b"fine", path_in_repo="fine.txt", repo_id=BASE)  # a plain folder takes them
    assert snapshot(outside) == before
    assert (root / BASE / "fine.txt").read_bytes() == b"fine"

"""Every call to the Hugging Face Hub goes through this module: fetching a model snapshot, reading the local cache,
loading a dataset split and pushing a folder.

Tests reach it through one seam: ``fetch_snapshot`` takes the download function and ``push_folder`` takes the
``HfApi``. The token comes from ``HF_TOKEN`` or the stored login, inside huggingface_hub; steerfold never reads,
prints or writes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from steerfold.errors import BadInput, IOFailure, SteerfoldError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "tokenizer*"]


def looks_like_repo_id(text: str) -> bool:
    return bool(REPO_ID.match(text)) and not Path(text).exists()


def _hub_error(exc: Exception, repo_id: str, revision: str | None, fetching: bool = False) -> SteerfoldError:
    """One line for each way a Hub call fails; a failed fetch also says that no local folder has that name (the id
    may be a mistyped path)."""
    from huggingface_hub import errors

    where = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    nowhere = ", no local folder of that name exists," if fetching else ""
    if isinstance(exc, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError)):
        return IOFailure(f"{where} is not in the local cache{nowhere} and the Hub cannot be reached (offline): "
                              "download it once with network access, or pass a local folder")
    if isinstance(exc, errors.GatedRepoError):
        return BadInput(f"{where} is gated: accept its terms on the Hub, then log in (hf auth login) or set HF_TOKEN")
    if isinstance(exc, errors.RevisionNotFoundError):
        return BadInput(f"revision {revision} of {repo_id} does not exist: check --revision")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return BadInput(f"{repo_id} does not exist or is private{nowhere.rstrip(',')}: check the id, or log in "
                              "(hf auth login) or set HF_TOKEN")
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return IOFailure(f"the Hub refused access to {where} (HTTP {status}): log in (hf auth login) or set HF_TOKEN with write access")
        return IOFailure(f"the Hub answered HTTP {status} for {where}: try again later")
    return IOFailure(f"cannot reach the Hub for {where} ({type(exc).__name__}): check your network, or pass a local folder")


def fetch_snapshot(repo_id: str, revision: str | None = None, download: Callable[..., str] | None = None) -> Path:
    """A local folder holding the model files of ``repo_id`` (from huggingface_hub's cache when present)."""
    from huggingface_hub import snapshot_download

    download = download or snapshot_download
    try:
        return Path(download(repo_id, revision=revision, allow_patterns=MODEL_FILES))
    except Exception as exc:  # every failure of the download becomes one line
        raise _hub_error(exc, repo_id, revision, fetching=True) from None


def resolve_model(model: str | Path, revision: str | None = None, download: Callable[..., str] | None = None) -> Path:
    """A local folder for MODEL: the path itself, or a snapshot of a Hub id."""
    text = str(model)
    if Path(text).exists() or not looks_like_repo_id(text):
        if revision is not None and Path(text).exists():
            raise BadInput(f"--revision applies to Hub ids, but {text} is a local folder: drop --revision")
        from steerfold.models.gguf import convert_gguf, is_gguf_input

        if is_gguf_input(text):  # a GGUF file: its float32 conversion, cached
            return convert_gguf(text)
        return Path(text)
    return fetch_snapshot(text, revision, download)


def cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """A file of a Hub repository from the local cache only (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # an id the cache cannot even parse
        return None
    return Path(cached) if isinstance(cached, str) else None


def load_dataset_split(dataset: str, split: str) -> Any:
    """One split of a Hub dataset (through the datasets package, an optional dependency); failures are one line."""
    try:
        import datasets
    except ImportError:
        raise BadInput(f"prompts from the Hub dataset {dataset} need the datasets package: pip install datasets") from None
    try:
        return datasets.load_dataset(dataset, split=split)
    except Exception as exc:  # every failure to fetch becomes one line
        raise BadInput(f"could not load dataset {dataset} split {split} ({type(exc).__name__}): "
                             "check the id and split, and that the Hub is reachable") from None


@dataclass(frozen=True)
class BaseModel:
    """The base an artifact records: its Hub id and revision where known (never a local path), and its folder."""

    repo_id: str | None
    revision: str | None
    folder: Path

    @property
    def label(self) -> str:
        """What a card calls the base: its Hub id, or the folder's name."""
        return self.repo_id or self.folder.name


def hub_identity(folder: Path) -> tuple[str, str] | None:
    """The Hub id and revision of a folder in huggingface_hub's cache (``models--owner--name/snapshots/REV``)."""
    parts = Path(folder).absolute().parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots" and "--" in part[len("models--"):]:
            return part[len("models--"):].replace("--", "/", 1), parts[i + 2]
    return None


def identify_base(model: str | Path, folder: Path, given_id: str | None = None, revision: str | None = None) -> BaseModel:
    """The base's Hub identity: ``given_id`` (--base-model-id), the Hub id the user passed, or the cache folder's."""
    if given_id is not None:
        if not REPO_ID.match(given_id):
            raise BadInput(f"--base-model-id '{given_id}' is not a repository id: write it as owner/name")
        return BaseModel(given_id, revision, folder)
    if looks_like_repo_id(str(model)):
        return BaseModel(str(model), revision, folder)
    found = hub_identity(folder)
    return BaseModel(*found, folder) if found else BaseModel(None, None, folder)


@dataclass(frozen=True)
class PlannedFile:
    path_in_repo: str
    local: Path
    size: int


def plan_push(folder: Path) -> list[PlannedFile]:
    """Every file that a push of ``folder`` uploads (hidden files and folders excluded), once ``steerfold verify``
    finds the folder intact: a tampered or incomplete artifact is never uploaded."""
    from steerfold.artifacts.checksums import verify

    if not folder.is_dir():
        raise BadInput(f"{folder} is not a folder: pass a folder written by steerfold")
    problems = verify(folder)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BadInput(f"{folder} fails steerfold verify: {problems[0]}{more}; re-export it before pushing")
    check_recorded_base(folder)
    files = [
        PlannedFile(p.relative_to(folder).as_posix(), p, p.stat().st_size)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not files:
        raise BadInput(f"{folder} is empty: nothing to push")
    return files


def check_recorded_base(folder: Path) -> None:
    """Refuse an artifact whose recorded base is a local path (an adapter's base_model_name_or_path, or a card with
    no Hub base): on the Hub no one else has that path."""
    import json

    config = folder / "adapter_config.json"
    if config.is_file():
        recorded = json.loads(config.read_text()).get("base_model_name_or_path")
        if not (isinstance(recorded, str) and REPO_ID.match(recorded)):
            raise BadInput(f"{folder} is an adapter whose base is the local path {recorded}, which no one else has: "
                                 "export it again with --base-model-id OWNER/NAME (the base's Hub id)")
    card = folder / "README.md"
    text = card.read_text() if card.is_file() else ""
    if text.startswith("---") and "\nbase_model:" not in text.split("\n---", 1)[0]:
        raise BadInput(f"{folder}'s card names no Hub base model (it was made from a local folder): export it again "
                             "with --base-model-id OWNER/NAME (the base's Hub id)")


def push_folder(
    folder: Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    api: Any = None,
) -> str:
    """Create the repo if needed, then upload every file in one atomic commit; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    if not REPO_ID.match(repo_id):
        raise BadInput(f"'{repo_id}' is not a repository id: write it as owner/name")
    files = plan_push(folder)
    api = api or HfApi()
    message = commit_message or f"Upload {folder.name} with steerfold"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        operations = [CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=str(f.local)) for f in files]
        info = api.create_commit(repo_id, operations, commit_message=message, revision=revision,
                                 create_pr=create_pr, repo_type="model")
    except SteerfoldError:
        raise
    except Exception as exc:
        raise _hub_error(exc, repo_id, revision) from None
    return str(getattr(info, "pr_url", None) or getattr(info, "commit_url", info))

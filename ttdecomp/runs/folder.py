"""The output folder of a run: checked first, every entry recorded, overwritten only where recorded.

A run (``ttdecomp finetune``, ``ttdecomp search``) owns the files it wrote and nothing else.
Each one it writes at the top of its folder, or inside a folder it shares with others (such
as ``runs/``, which TensorBoard also uses), is recorded under ``"files"`` in its results
document (``results.json``, ``search.json``). ``--overwrite`` deletes exactly those entries of
the previous run and refuses a non-empty folder that holds no results document of the
command; anything else in the folder (a TensorBoard log, the user's notes) stays.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from .._files import read_json
from ..errors import InvalidInputError

__all__ = ["OutputFolder", "check_output"]


def check_output(path: str | os.PathLike) -> None:
    """Fail now, naming ``path``, if the folder cannot be created or written.

    An existing folder is probed with a temporary file; a new one is created and removed
    again (with the parents this call created), so a failed check leaves nothing behind.

    Examples
    --------
    >>> import tempfile
    >>> check_output(Path(tempfile.mkdtemp()) / "new" / "run")
    >>> f = Path(tempfile.mkdtemp()) / "file"
    >>> _ = f.write_text("x")
    >>> try:
    ...     check_output(f / "run")
    ... except InvalidInputError as err:
    ...     print("refused:", "is a file" in str(err))
    refused: True
    """
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise InvalidInputError(
                f"--output {path} cannot be created: {p} is a file, not a folder. Choose "
                "another folder."
            )
    try:
        if path.is_dir():
            fd, probe = tempfile.mkstemp(prefix=".ttdecomp-probe-", dir=path)
            os.close(fd)
            os.unlink(probe)
            return
        missing = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(parents=True)
        fd, probe = tempfile.mkstemp(prefix=".ttdecomp-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
        for p in missing:  # deepest first
            p.rmdir()
    except OSError as exc:
        raise InvalidInputError(
            f"--output {path} cannot be written ({exc.strerror or exc}); choose a folder you "
            "can write to."
        ) from None


def _relative(entry: Any, root: Path, document: Path) -> PurePosixPath:
    """A recorded entry as a path inside ``root`` (refusing anything that leaves it)."""
    if not isinstance(entry, str) or not entry:
        raise InvalidInputError(f"{document}: 'files' holds {entry!r}; expected relative paths.")
    rel = PurePosixPath(entry)
    if rel.is_absolute() or ".." in rel.parts or "\\" in entry:
        raise InvalidInputError(
            f"{document} records {entry!r}, which is not a path inside {root}; ttdecomp never "
            "deletes outside the run folder. The file was edited by hand or not written by "
            "ttdecomp."
        )
    return rel


class OutputFolder:
    """The output folder of one run of a command.

    Parameters
    ----------
    path : path
        The folder (``--output``).
    results_file : str
        The command's results document in it (``results.json``, ``search.json``).
    validate : callable, optional
        ``validate(document, path)`` raises :class:`~ttdecomp.errors.InvalidInputError` naming
        what is wrong with a previous results document (for ``--resume``).
    legacy_files : callable, optional
        ``legacy_files(document)``: the entries a results document written before ``"files"``
        was recorded owns.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> folder = OutputFolder(root / "out", "results.json")
    >>> folder.prepare(resume=False, overwrite=False)
    >>> folder.mkdir("runs/lora-seed0")
    PosixPath('.../out/runs/lora-seed0')
    >>> _ = folder.record("results.json")
    >>> folder.files
    ['results.json', 'runs/', 'runs/lora-seed0/']
    """

    def __init__(
        self,
        path: str | os.PathLike,
        results_file: str,
        *,
        validate: Callable[[dict[str, Any], Path], None] | None = None,
        legacy_files: Callable[[dict[str, Any]], Iterable[str]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.results_file = results_file
        self.validate = validate
        self.legacy_files = legacy_files
        self.previous: dict[str, Any] | None = None
        self._previous_files: list[PurePosixPath] = []
        self._files: set[str] = set()
        self._aside: tuple[Path | None, list[PurePosixPath]] = (None, [])
        self._shared: list[PurePosixPath] = []

    @property
    def document(self) -> Path:
        """The results document's path."""
        return self.path / self.results_file

    @property
    def files(self) -> list[str]:
        """Every entry this run recorded (folders end with ``/``), sorted: what to store
        under ``"files"`` in the results document."""
        return sorted(self._files)

    def prepare(self, *, resume: bool, overwrite: bool, probe: bool = True) -> None:
        """Check the folder before any model loads; read the previous document when needed.

        Refused: ``resume`` with ``overwrite``; a path that is a file or cannot be created or
        written; ``resume`` without a valid results document; a non-empty folder without
        ``overwrite`` or ``resume``; ``overwrite`` of a non-empty folder that holds no results
        document of this command. Nothing is deleted here (see :meth:`clear_previous`).
        ``probe=False`` skips the write check (the other processes of a ``torchrun`` job).
        """
        if resume and overwrite:
            raise InvalidInputError("--resume and --overwrite contradict each other; choose one.")
        if self.path.exists() and not self.path.is_dir():
            raise InvalidInputError(f"--output {self.path} is a file; give a folder.")
        if probe:
            check_output(self.path)
        if resume:
            if not self.document.exists():
                raise InvalidInputError(
                    f"--resume: {self.path} holds no {self.results_file}; nothing to resume. "
                    "Drop --resume to start a new run there."
                )
            self.previous = self._read(validate=True)
            self.adopt()
            return
        if not (self.path.exists() and any(self.path.iterdir())):
            return
        if not overwrite:
            raise InvalidInputError(
                f"--output {self.path} exists and is not empty; pass --overwrite to replace its "
                "results, --resume to continue the run in it, or choose another folder."
            )
        if not self.document.is_file():
            raise InvalidInputError(
                f"--overwrite: {self.path} is not empty and holds no {self.results_file}, so no "
                "ttdecomp run recorded what it may delete there; ttdecomp deletes only files a "
                "run of its own wrote. Choose another folder, or empty this one yourself."
            )
        self.previous = self._read(validate=False)
        self._previous_files = self._recorded(self.previous)

    def _read(self, *, validate: bool) -> dict[str, Any]:
        what = f"a ttdecomp {self.results_file}"
        document = read_json(self.document, what=what)
        if not isinstance(document, dict):
            raise InvalidInputError(
                f"{self.document} holds a {type(document).__name__}, not a JSON object; it is "
                f"not {what}."
            )
        self._recorded(document)  # the entries must be paths inside the folder
        if validate and self.validate is not None:
            self.validate(document, self.document)
        return document

    def _recorded(self, document: dict[str, Any]) -> list[PurePosixPath]:
        if "files" in document:
            entries = document["files"]
            if not isinstance(entries, list):
                raise InvalidInputError(
                    f"{self.document}: 'files' is a {type(entries).__name__}; expected a list "
                    "of the paths the run wrote."
                )
        elif self.legacy_files is not None:
            entries = list(self.legacy_files(document))
        else:
            entries = [self.results_file]
        return [_relative(e, self.path, self.document) for e in entries]

    def adopt(self) -> None:
        """The previous run's entries are this run's too (a resumed run); reads the results
        document if :meth:`prepare` has not (a command that resumes from another file)."""
        if self.previous is None:
            if not self.document.is_file():
                return
            self.previous = self._read(validate=False)
        for rel in self._recorded(self.previous):
            self._files.add(str(rel) + ("/" if (self.path / rel).is_dir() else ""))

    def clear_previous(self) -> list[str]:
        """Delete what the previous run recorded (after :meth:`prepare` with ``overwrite``).

        Files and folders it recorded are removed (a symbolic link itself, never its target);
        a recorded folder left empty goes too. Returns the entries removed.
        """
        removed = []
        entries = self._previous_files
        # deepest first: what a recorded folder holds goes before the folder
        for rel in sorted(entries, key=lambda r: len(r.parts), reverse=True):
            target = self.path / rel
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                if any(rel in r.parents for r in entries):
                    # a folder holding other recorded entries (``runs/``): removed only when
                    # nothing else is left in it
                    with contextlib.suppress(OSError):
                        target.rmdir()
                    if target.exists():
                        continue
                else:
                    shutil.rmtree(target)
            else:
                continue
            removed.append(str(rel))
        self._previous_files = []
        return removed

    def set_aside_previous(self) -> None:
        """Move what the previous run recorded into a hidden folder of the output folder
        (after :meth:`prepare` with ``overwrite``), out of the new run's way but not lost.

        For a command that must start writing (a study's database that worker processes open
        while this one loads the model) before it has checked everything: if the new run
        fails before it has anything, :meth:`restore_previous` puts the previous run back;
        once it is under way, :meth:`drop_previous` deletes it as :meth:`clear_previous`
        would. A process killed in between leaves it in ``.ttdecomp-previous-*``.

        Examples
        --------
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "results.json").write_text('{"files": ["results.json", "model/"]}')
        >>> (root / "model").mkdir()
        >>> folder = OutputFolder(root, "results.json")
        >>> folder.prepare(resume=False, overwrite=True)
        >>> folder.set_aside_previous()
        >>> sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        []
        >>> folder.restore_previous()  # the new run failed: the previous one is back
        >>> sorted(p.name for p in root.iterdir())
        ['model', 'results.json']
        """
        entries = [
            rel
            for rel in self._previous_files
            if (self.path / rel).exists() or (self.path / rel).is_symlink()
        ]
        # what a recorded folder holding other recorded entries (``runs/``) holds is moved;
        # the folder itself stays (others may use it), and goes with drop_previous if empty
        leaves = [rel for rel in entries if not any(rel in r.parents for r in entries)]
        self._shared = [rel for rel in entries if rel not in leaves]
        self._previous_files = []
        if not leaves:
            return
        aside = Path(tempfile.mkdtemp(prefix=".ttdecomp-previous-", dir=self.path))
        self._aside = (aside, [])
        for rel in leaves:
            (aside / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path / rel, aside / rel)
            self._aside[1].append(rel)

    def restore_previous(self) -> None:
        """Undo a new run that failed before it had anything: delete every entry it recorded,
        then put back what :meth:`set_aside_previous` moved."""
        for entry in sorted(self._files, key=lambda e: e.count("/") - e.endswith("/"))[::-1]:
            target = self.path / entry.rstrip("/")
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
        self._files = set()
        aside, moved = self._aside
        for rel in moved:
            target = self.path / rel
            if target.exists() or target.is_symlink():
                continue  # not this run's: the previous entry stays aside, not lost
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(aside / rel, target)
        if aside is not None and all(p.is_dir() and not p.is_symlink() for p in aside.rglob("*")):
            shutil.rmtree(aside)  # only the emptied folders are left
        self._aside = (None, [])

    def drop_previous(self) -> list[str]:
        """Delete what :meth:`set_aside_previous` moved; returns the entries removed."""
        aside, moved = self._aside
        if aside is not None:
            shutil.rmtree(aside)
        for rel in sorted(self._shared, key=lambda r: len(r.parts), reverse=True):
            with contextlib.suppress(OSError):
                (self.path / rel).rmdir()  # a shared folder left empty
        self._aside, self._shared = (None, []), []
        return [str(rel) for rel in moved]

    def record(self, entry: str) -> Path:
        """Record ``entry`` (a path relative to the folder) as written by this run."""
        rel = _relative(entry.rstrip("/"), self.path, self.document)
        target = self.path / rel
        self._files.add(str(rel) + ("/" if entry.endswith("/") or target.is_dir() else ""))
        return target

    def mkdir(self, entry: str) -> Path:
        """Create the folder ``entry`` and its missing parents, recording those it creates.

        A folder that exists already (``runs/`` made by TensorBoard) is used, not recorded.
        """
        rel = _relative(entry.rstrip("/"), self.path, self.document)
        for n in range(1, len(rel.parts) + 1):
            part = PurePosixPath(*rel.parts[:n])
            target = self.path / part
            if target.is_symlink():
                raise InvalidInputError(
                    f"{target} is a symbolic link; a run writes only into folders of its own."
                )
            if not target.exists():
                target.mkdir(parents=True)
                self._files.add(f"{part}/")
        return self.path / rel

    def owns(self, entry: str) -> bool:
        """Whether ``entry`` was recorded (by this run or, on resume, the previous one)."""
        rel = str(_relative(entry.rstrip("/"), self.path, self.document))
        return rel in self._files or f"{rel}/" in self._files

    def claim(self, entry: str) -> Path:
        """Record ``entry`` as this run's before it is written: refused if something not
        recorded by a ttdecomp run (this one or, on resume, the previous one) is there."""
        target = self.path / _relative(entry.rstrip("/"), self.path, self.document)
        if (target.exists() or target.is_symlink()) and not self.owns(entry):
            raise InvalidInputError(
                f"{target} exists but no ttdecomp run recorded it in {self.document}; ttdecomp "
                "deletes only what a run of its own wrote. Move it away or choose another "
                "--output."
            )
        return self.record(entry)

    def fresh(self, entry: str) -> Path:
        """The folder ``entry``, emptied for a run that starts it over: deleted first if
        this run or the previous one recorded it; an unrecorded one is refused."""
        target = self.path / _relative(entry.rstrip("/"), self.path, self.document)
        if target.exists() or target.is_symlink():
            if not self.owns(entry) or target.is_symlink():
                raise InvalidInputError(
                    f"{target} exists but no ttdecomp run recorded it in {self.document}; "
                    "ttdecomp deletes only what a run of its own wrote. Move it away or choose "
                    "another --output."
                )
            shutil.rmtree(target)
        return self.mkdir(entry)

"""Download a file with a progress bar and check its md5.

A download goes through a temporary ``.part`` file next to the target (:func:`pipeline.io.atomic.atomic_path`), and
its md5 is checked before the rename, so an interrupted or corrupt download never leaves a file under the final
name. Error messages end with what to do: ``retry`` is the user's command (e.g.
``pipeline data fetch msd-prostate --root DIR``), used to suggest running it again or with ``--archive``.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.errors import DataError
from pipeline.io.atomic import atomic_path

__all__ = ["check_md5", "download", "file_md5"]

_CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    """The hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path: Path, md5: str | None, what: str, retry: str) -> None:
    """Check that ``path`` has md5 ``md5`` (``None``: no check).

    Args:
        path: the file to check.
        md5: expected hex md5 (any case), or ``None`` to skip the check.
        what: how the message names the file, e.g. ``"archive"``.
        retry: the command to suggest running again once the file is deleted.

    Raises:
        DataError: the md5 differs; the message names the file, both md5s and what to do.
    """
    if md5 is None:
        return
    actual = file_md5(path)
    if actual != md5.lower():
        raise DataError(
            f"{what} {path} has md5 {actual}, expected {md5.lower()}: the file is corrupt, incomplete or a "
            f"different version. Delete {path} and retry `{retry}`."
        )


def download(url: str, target: Path, md5: str | None, *, progress: bool, retry: str) -> None:
    """Download ``url`` to ``target`` through a temporary ``.part`` file, checking ``md5`` before the rename.

    Args:
        url: ``https://``, ``http://`` or ``file://`` address.
        target: final path; it only appears once the download is complete and its md5 is right.
        md5: expected hex md5, or ``None`` to skip the check.
        progress: show a tqdm progress bar.
        retry: the user's command; the messages suggest ``{retry} --archive PATH/{target.name}`` as the way to
            pass a copy downloaded by hand.

    Raises:
        DataError: the download failed, was cut short or has the wrong md5 (nothing is kept).
    """
    from tqdm import tqdm

    advice = (
        f"Download {url} by hand (browser, curl or wget) and pass it with "
        f"`{retry} --archive PATH/{target.name}`."
    )
    digest = hashlib.md5()
    with atomic_path(target) as part:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with (
                    open(part, "wb") as out,
                    tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=target.name,
                        disable=not progress,
                    ) as bar,
                ):
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                if total is not None and part.stat().st_size != total:
                    raise DataError(
                        f"download of {url} was cut short ({part.stat().st_size} of {total} bytes). "
                        f"Run the command again to retry. {advice}"
                    )
        except DataError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(f"could not download {url}: {reason}. {advice}") from e
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise DataError(
                f"the archive downloaded from {url} has md5 {digest.hexdigest()}, expected {md5.lower()}: the "
                f"download is corrupt or the file on the server changed. It was not kept; run the command again "
                f"to retry. {advice}"
            )

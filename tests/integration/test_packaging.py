"""The wheel carries the migrations, so `flowd migrate` works from an installed package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_every_migration_inside_the_package(tmp_path: Path) -> None:
    """Each SQL file of migrations/ is in the wheel as flowd/migrations/<name>, byte for byte."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("flowd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {
            Path(name).name: archive.read(name)
            for name in archive.namelist()
            if name.startswith("flowd/migrations/") and name.endswith(".sql")
        }
        assert "flowd/cli.py" in archive.namelist()
    source = {path.name: path.read_bytes() for path in (ROOT / "migrations").glob("*.sql")}
    assert source
    assert packaged == source


def test_migration_names_follow_the_supabase_cli_convention() -> None:
    """Files are `<14-digit timestamp>_<name>.sql`, so they can be copied to supabase/migrations."""
    names = [path.name for path in (ROOT / "migrations").glob("*.sql")]
    assert names
    for name in names:
        stamp, _, rest = name.partition("_")
        assert len(stamp) == 14, name
        assert stamp.isdigit(), name
        assert rest.endswith(".sql"), name

"""Resolve, decide, stage: one import point for phases 2 and 4.

The code lives in `runner.resolve` (registry query and the pure decision) and
`runner.stage` (release directories, kept tarballs); quarantine records in
`runner.quarantine`. This module only re-exports them.
"""
from __future__ import annotations

from .quarantine import clear_quarantine, quarantine_build, quarantined_versions, read_quarantine
from .resolve import (CODES, Decision, ResolveError, Target, decide, npm_view_argv, parse_view_output,
                      resolve_target, validate_package, validate_tag)
from .stage import (Release, StageError, clean_staging, load_release, npm_install_argv, npm_pack_argv,
                    reinstall_from_tarball, remove_release, sha512_of, stage_for, stage_release,
                    t3_version_argv, verify_release)

__all__ = [
    "CODES", "Decision", "ResolveError", "Target", "decide", "npm_view_argv", "parse_view_output",
    "resolve_target", "validate_package", "validate_tag",
    "Release", "StageError", "clean_staging", "load_release", "npm_install_argv", "npm_pack_argv",
    "reinstall_from_tarball", "remove_release", "sha512_of", "stage_for", "stage_release", "t3_version_argv",
    "verify_release",
    "clear_quarantine", "quarantine_build", "quarantined_versions", "read_quarantine",
]

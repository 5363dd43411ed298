"""Reading the registry's profiles (``profiles.toml``): each profile's overrides, synth settings, per-variant
and per-backbone overrides, merged along its ``extends`` chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdcicam.core.config import BACKBONES, ROLES, SynthConfig, from_dict
from kdcicam.core.errors import ConfigError
from kdcicam.registry.definitions import Profile
from kdcicam.registry.toml_checks import check_keys, check_overrides, read_toml, typed


def read_profiles(path: Path) -> dict[str, Profile]:
    """Read ``profiles.toml``. A profile may ``extends`` another: it starts from that profile's synth,
    overrides and per-variant overrides and changes what it names (its own description, ``reduced``
    and ``needs_*`` are always its own)."""
    raw = read_toml(path)
    out: dict[str, Profile] = {}
    for name, p in raw.items():
        where = f"{path.name}: profile {name!r}"
        check_keys(where, p, {"description", "reduced"},
              {"extends", "needs_real_data", "needs_weights", "needs_gpu", "overrides", "synth", "variant", "backbone"})
        typed(f"{where}: description", p["description"], str, "a string")
        for flag in ("reduced", "needs_real_data", "needs_weights", "needs_gpu"):
            typed(f"{where}: {flag}", p.get(flag, False), bool, "true or false")
        for section in ("overrides", "synth", "variant", "backbone"):
            typed(f"{where}: {section}", p.get(section, {}), dict, "a table")
        synth = _merged(raw, name, "synth", path.name)
        from_dict(SynthConfig, synth, where=f"{where}: synth")
        variant = _merged(raw, name, "variant", path.name)
        for vname, v in variant.items():
            v = dict(typed(f"{where}: variant.{vname}", v, dict, "a table of dotted config keys"))
            roles = typed(f"{where}: variant.{vname}.role", v.pop("role", {}), dict, "a table of roles")
            check_overrides(f"{where}: variant.{vname}", v)
            for rname, r in roles.items():
                if rname not in ROLES:
                    raise ConfigError(f"{where}: variant.{vname}.role.{rname}: unknown role")
                check_overrides(f"{where}: variant.{vname}.role.{rname}", r)
        backbone = _merged(raw, name, "backbone", path.name)
        for bname, b in backbone.items():
            if bname not in BACKBONES:
                raise ConfigError(f"{where}: backbone.{bname}: unknown backbone (known: {', '.join(BACKBONES)})")
            backbone[bname] = check_overrides(f"{where}: backbone.{bname}", b)
        out[name] = Profile(name=name, description=p["description"], reduced=bool(p["reduced"]),
                            needs_real_data=p.get("needs_real_data", False),
                            needs_weights=p.get("needs_weights", False), needs_gpu=p.get("needs_gpu", False),
                            overrides=check_overrides(f"{where}: overrides", _merged(raw, name, "overrides", path.name)),
                            synth=synth, variant=variant, backbone=backbone)
    return out


def _merged(raw: dict[str, Any], name: str, section: str, file: str) -> dict[str, Any]:
    """Profile ``name``'s ``section`` on top of the profile it ``extends`` (recursively; nested tables
    merged key by key)."""
    chain = [name]
    while "extends" in raw[chain[-1]]:
        base = raw[chain[-1]]["extends"]
        where = f"{file}: profile {chain[-1]!r}: extends"
        if not isinstance(base, str) or base not in raw:
            raise ConfigError(f"{where}: unknown profile {base!r} (known: {', '.join(sorted(raw))})")
        if base in chain:
            raise ConfigError(f"{where}: {' -> '.join([*chain, base])} is a cycle")
        chain.append(base)
    merged: dict[str, Any] = {}
    for prof in reversed(chain):  # the base first, the named profile last
        _deep_update(merged, raw[prof].get(section, {}))
    return merged


def _deep_update(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Merge ``update`` into ``into``: nested tables key by key (copied, never shared), other values replaced."""
    for key, value in update.items():
        if isinstance(value, dict):
            if not isinstance(into.get(key), dict):
                into[key] = {}
            _deep_update(into[key], value)
        else:
            into[key] = value

"""Turns the dashboard JSON into a TypeScript module that `tsc --noEmit` checks against Grafana.

Why not `import dashboard from "x.json"` alone: TypeScript widens every string of a JSON
module to `string` (so `"mode": "absolute"` no longer fits the `ThresholdsMode` union) and
skips excess-property checks, so a misspelt field would pass. A literal in a `.ts` file is
typed against the schema field by field. Each panel's options (and custom field config) are
also checked against that panel plugin's own published types, as `Partial<...>` because
Grafana fills options left out with the plugin's defaults.

The schema declares many fields as TypeScript string enums (`BigValueColorMode.Value`), which
no string literal satisfies; `Wire<T>` maps each such enum to the union of its string values,
the form a dashboard JSON file holds, and leaves everything else as published.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA = "@grafana/schema"
_PLUGIN = SCHEMA + "/dist/esm/raw/composable/{name}/panelcfg/x/{cfg}PanelCfg_types.gen"
# Panel type -> (import alias, module of its published Options / FieldConfig, has FieldConfig)
PLUGINS: dict[str, tuple[str, str, bool]] = {
    "timeseries": ("TimeSeries", _PLUGIN.format(name="timeseries", cfg="TimeSeries"), True),
    "stat": ("Stat", _PLUGIN.format(name="stat", cfg="Stat"), False),
    "bargauge": ("BarGauge", _PLUGIN.format(name="bargauge", cfg="BarGauge"), False),
    "table": ("Table", _PLUGIN.format(name="table", cfg="Table"), True),
}


def _literal(value: Any) -> str:
    return json.dumps(value, indent=2)


def _panel(panel: dict[str, Any]) -> str:
    kind = panel["type"]
    if kind == "row":
        return f"({_literal(panel)} satisfies Wire<RowPanel>)"
    if kind not in PLUGINS:
        raise ValueError(f"panel {panel.get('title')!r}: type {kind!r} has no typed check here")
    alias, _, has_field_config = PLUGINS[kind]
    rest = {k: v for k, v in panel.items() if k != "options"}
    body = _literal(rest).rstrip()[:-1].rstrip()  # reopen the object to append `options`
    options = _literal(panel.get("options", {}))
    body += f',\n  "options": ({options} satisfies Wire<Partial<{alias}Options>>)\n}}'
    custom = f"{alias}FieldConfig" if has_field_config else "Record<string, unknown>"
    return f"({body} satisfies Wire<Panel<Record<string, unknown>, Partial<{custom}>>>)"


WIRE = """\
type Wire<T> = T extends string
  ? `${T}`
  : T extends Array<infer U>
    ? Array<Wire<U>>
    : T extends object
      ? { [K in keyof T]: Wire<T[K]> }
      : T;
"""


def dashboard_module(dashboard: dict[str, Any]) -> str:
    """The TypeScript source: imports, then `export const dashboard: Wire<Dashboard> = {...}`."""
    lines = [f'import type {{ Dashboard, Panel, RowPanel }} from "{SCHEMA}";']
    for alias, module, has_field_config in PLUGINS.values():
        names = f"Options as {alias}Options"
        if has_field_config:
            names += f", FieldConfig as {alias}FieldConfig"
        lines.append(f'import type {{ {names} }} from "{module}";')
    top = {k: v for k, v in dashboard.items() if k != "panels"}
    body = _literal(top).rstrip()[:-1].rstrip()
    panels = ",\n".join(_panel(p) for p in dashboard.get("panels", []))
    lines.append(WIRE)
    lines.append(
        f'export const dashboard: Wire<Dashboard> = {body},\n  "panels": [\n{panels}\n]\n}};'
    )
    return "\n".join(lines) + "\n"

"""The papers' numbers as data (one YAML per paper; README.md says what each field means), shipped
in the wheel as `prune_cli.published` so an installed `prune-report --published published` finds
them from any folder (prune_cli.reports.published)."""

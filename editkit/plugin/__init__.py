"""The plugin system: hook specifications, the plugin kinds (the contract a plugin
meets) and the registry that loads plugins from the `editkit` entry points."""

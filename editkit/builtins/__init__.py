"""The built-in plugins, one module or folder each, named by their `use:` name and
registered through the `editkit` entry points exactly like a third party's."""

"""irface.export (see DESIGN.md)."""

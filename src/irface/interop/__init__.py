"""irface.interop (see DESIGN.md)."""

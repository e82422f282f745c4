"""Pure tensor functions, one module per mathematical family; no model library imported here."""

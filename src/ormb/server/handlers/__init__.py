"""One module per resource of the distribution spec; each exports ``HANDLERS``: method -> function."""

"""dash_vl inside other tools' harnesses."""

"""The backbone ports, the transfer model (backbone + head) and their variants."""

"""The CG-DMER network: layers, ECG and report towers, disentanglement, decoders, wiring."""

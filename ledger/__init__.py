"""The write side of keyledger: events, codec, crypto, storage, commands and verification."""

"""The faces of keyledger: the Litestar HTTP app and the CLI."""

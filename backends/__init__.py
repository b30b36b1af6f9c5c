"""Built-in backends, one module per framework; each is a pluggy plugin of convscope."""

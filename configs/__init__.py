"""ml-collections configs: `default` (every knob), `dog_horse` (the seed recipe), `ablations`."""

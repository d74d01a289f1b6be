"""The silicon: DRAM, the memory encryption engine and its key slots, the CPU, chip presets."""

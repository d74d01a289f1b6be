"""The AMD Secure Processor: keys, launch, measurement. Secrets stay inside this package."""

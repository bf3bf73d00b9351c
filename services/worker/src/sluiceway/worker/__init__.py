"""The worker service: reads one key range per chunk task and writes its part files."""

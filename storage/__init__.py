"""Knowledge-base storage: vector index + SQLite chunk/manifest store, no pickle on disk."""

"""The key service domain: keys, crypto, authorization, lifecycle, stores."""

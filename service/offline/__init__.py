"""Offline jobs without a server: `cpc-embed index` and `cpc-embed embed-folder`."""

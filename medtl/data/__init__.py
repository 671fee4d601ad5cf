"""Data: manifests, scan readers, checks, splits, transforms, datasets and synthetic scans."""

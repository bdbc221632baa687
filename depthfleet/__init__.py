"""DepthFleet: MiDaS v2.1 small depth maps for photo archives."""

# In a checkout the current directory may put this folder first on sys.path, while api/,
# worker/ and shared/ are depthfleet.* only in the editable install's link tree (see
# scripts/bootstrap): the package spans both, as pkgutil-style packages do.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

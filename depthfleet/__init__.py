"""DepthFleet: MiDaS v2.1 small depth maps for photo archives."""

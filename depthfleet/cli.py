def main() -> None:
    print("depthfleet")

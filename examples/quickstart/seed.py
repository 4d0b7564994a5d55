"""A job: writes seed data into the environment's data directory, once per input change."""
import json
import os
import time

data_dir = os.environ["SLIPWAY_DATA_DIR"]
with open(os.environ["CONFIG"], encoding="utf-8") as f:
    config = f.read()
path = os.path.join(data_dir, "seed.json")
tmp = path + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"seeded_at": time.time(), "config_bytes": len(config)}, f)
os.replace(tmp, path)
print(f"seeded {path}")

print("referrald-bench: not written yet")

print("referrald-faults: not written yet")

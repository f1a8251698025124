"""`make loadtest-router`'s run, short: Locust's streaming image/video chats through the keyed gateway,
SMG and both workers. No failure of any kind, and both workers served some of it."""

from loadtest.run import run_locust, summary


def test_locust_through_smg_has_no_failures(router_stack, tmp_path):
    before = router_stack.served()
    rc = run_locust(router_stack.keyed, tmp_path, users=4, spawn_rate=4, duration="20s", extra=["--max-tokens", "8"])
    figures = summary(tmp_path)
    served = [after - b for after, b in zip(router_stack.served(), before, strict=True)]
    print("locust through SMG:", figures, "served per worker:", served)
    assert rc == 0 and figures["all_failures"] == 0, figures
    assert figures["requests"] >= 2 and min(served) >= 1, served

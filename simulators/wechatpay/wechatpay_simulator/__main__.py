"""``python -m wechatpay_simulator --help``."""

from wechatpay_simulator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

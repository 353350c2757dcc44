"""WeChat Pay smart-mall (智慧商圈) simulator: a real aiohttp server speaking the platform's
protocol, for tests, ``make run`` and benchmarks.

- ``config.Settings`` / ``config.Merchant``: the platform key and the merchants it knows;
- ``app.create_app(settings)`` / ``app.serve(settings)``: the application, or it on a port;
- ``python -m wechatpay_simulator``: the same from the command line (``--help``).

Importing the package opens nothing and generates no key.
"""

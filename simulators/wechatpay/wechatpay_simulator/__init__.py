"""WeChat Pay smart-mall simulator."""

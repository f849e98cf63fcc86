    URL u = new URL("https://api.test/x?client_secret=Zg2xLN86Yfr6QUWx6f93BVo5uZhKzv");

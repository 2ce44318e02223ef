print('hello from python')

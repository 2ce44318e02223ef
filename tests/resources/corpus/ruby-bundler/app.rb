puts 'app'
